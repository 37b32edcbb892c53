"""ImageNet-C / CIFAR-10-C corruptions as batched torch ops on float (N, C, H, W) images in [0, 1].

The 15 benchmark corruptions and 4 hold-out ones of Hendrycks & Dietterich (ICLR 2019), severities
1-5, with the parameter tables of ``make_imagenet_c.py`` (224 px) and ``make_cifar_c.py`` (32 px).
They run on the images' device, are reproducible with ``seed=``/``generator=``, and reproduce the
reference pipeline given the same random draws (each registry entry's ``exact`` flag and ``note``
say how, and against which library versions). Official results still come from the released
ImageNet-C / CIFAR-C files (``vision.data.robustness``): the reference's RNG was unseeded, so no
regeneration matches them; these ops are for augmentation, monitoring and new image sets.

    from vision.corruptions import corrupt, Corrupt, CORRUPTIONS
    y = corrupt(images, "fog", severity=3, seed=0)
"""

from vision.corruptions.params import ALL, COMMON, GROUPS, HOLDOUT, PARAMS, SCALES
from vision.corruptions.registry import CORRUPTIONS, Corruption, corrupt, corruption_table, get_corruption, to_uint8
from vision.corruptions.transforms import Corrupt

__all__ = [
                                         "ALL",
                                         "COMMON",
                                         "CORRUPTIONS",
                                         "GROUPS",
                                         "HOLDOUT",
                                         "PARAMS",
                                         "SCALES",
                                         "Corrupt",
                                         "Corruption",
                                         "corrupt",
                                         "corruption_table",
                                         "get_corruption",
                                         "to_uint8",
]
