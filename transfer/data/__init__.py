"""The dataset: finding images and classes (finding.py, with the audit: audit.py, and the decoder: images.py),
splitting them (splits.py), and feeding them to Keras (pipeline.py); dataset.py holds what a scan returns.

Callers use this package's names (``data.scan``, ``data.Dataset`` ...); each lives in one module.
"""

from __future__ import annotations

from . import audit, images
from .dataset import (SPLIT_FOLDERS, SPLIT_ORDER, AuditReport, Dataset, Example, check_skips, csv_cell, csv_row,
                      display_path, summary, write_skipped)
from .finding import (check_cache_dir, check_class_name, check_layout, class_folders, pick_split, read_path_list,
                      scan, scan_labeled)
from .pipeline import batches, class_weights, decoded_bytes, decoded_images, make_tf_dataset, memory_budget
from .splits import changes, fingerprint, read_manifest, stratified_split, write_manifest
