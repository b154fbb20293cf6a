"""The CASS segmenter library: plain PyTorch (torch, numpy, scipy, open_clip,
timm), no ROS and no rosbags. docs/algorithm.md describes each step; each
lives in the module named for it.
"""
