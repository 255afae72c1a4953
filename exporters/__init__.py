"""Turning al_core results into outside formats: Label Studio regions (and later pushes, CSV, COCO/VOC)."""
