"""Contrastive losses (NT-Xent, GLCNet global and local) and the segmentation loss catalogue."""
