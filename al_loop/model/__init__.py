"""The segmentation model: U-Net, Monte Carlo inference and whole-set metrics."""
