"""LightningDataModules (ImageFolder, the embedded digits default, CIFAR) and dataset readers."""

from vision.data.cifar import CIFARDataModule
from vision.data.digits import DigitsDataModule
from vision.data.imagefolder import ImageFolderDataModule

__all__ = ["CIFARDataModule", "DigitsDataModule", "ImageFolderDataModule"]
