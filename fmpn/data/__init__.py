from fmpn.data.datasets import (
    FaceDataset,
    Sample,
    SampleSet,
    check_images,
    ckplus48_samples,
    fmpn_samples,
    folder_samples,
    read_labels,
)
from fmpn.data.transforms import PairedTransform

__all__ = [
    "FaceDataset",
    "PairedTransform",
    "Sample",
    "SampleSet",
    "check_images",
    "ckplus48_samples",
    "fmpn_samples",
    "folder_samples",
    "read_labels",
]
