"""Data: image readers, unlabeled and labeled datasets, presets, splits, demo scenes, loaders."""

from contrastseg.data.config import DemoDataConfig, LabeledDataConfig, UnlabeledDataConfig
from contrastseg.data.demo import (
    DEMO_CLASSES,
    DEMO_PALETTE,
    demo_scenes,
    make_scene,
    write_demo_dataset,
)
from contrastseg.data.files import Pair, find_images, pair_files
from contrastseg.data.labeled import LabeledDataset, patch_id
from contrastseg.data.loader import (
    Normalize,
    SeededRandomSampler,
    build_loader,
    dtype_scale,
    set_loader_epoch,
    to_float,
)
from contrastseg.data.palettes import Palette, check_index_mask, format_color, parse_color
from contrastseg.data.presets import PRESETS, apply_preset
from contrastseg.data.readers import ImageSize, Window, image_size, read_image, tiff_layout
from contrastseg.data.splits import (
    assign_split,
    draw_label_fraction,
    read_id_list,
    write_id_list,
)
from contrastseg.data.stats import (
    BandStats,
    compute_band_stats,
    load_stats_yaml,
    run_stats_command,
    write_stats_yaml,
)
from contrastseg.data.unlabeled import UnlabeledDataset

__all__ = [
    "DEMO_CLASSES",
    "DEMO_PALETTE",
    "PRESETS",
    "BandStats",
    "DemoDataConfig",
    "ImageSize",
    "LabeledDataConfig",
    "LabeledDataset",
    "Normalize",
    "Pair",
    "Palette",
    "SeededRandomSampler",
    "UnlabeledDataConfig",
    "UnlabeledDataset",
    "Window",
    "apply_preset",
    "assign_split",
    "build_loader",
    "check_index_mask",
    "compute_band_stats",
    "demo_scenes",
    "draw_label_fraction",
    "dtype_scale",
    "find_images",
    "format_color",
    "image_size",
    "load_stats_yaml",
    "make_scene",
    "pair_files",
    "parse_color",
    "patch_id",
    "read_id_list",
    "read_image",
    "run_stats_command",
    "set_loader_epoch",
    "tiff_layout",
    "to_float",
    "write_demo_dataset",
    "write_id_list",
    "write_stats_yaml",
]
