"""Silo data: image folders for classification, COCO folders for detection, synthetic data and splitters."""
