"""Token-reduction baselines the paper compares ProxyV with: VisionZip and PyramidDrop."""
