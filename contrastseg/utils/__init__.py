"""Small shared helpers (device selection, distributed utilities)."""
