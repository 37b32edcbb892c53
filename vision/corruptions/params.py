"""ImageNet-C / CIFAR-10-C corruption names, groups and per-severity parameters (pure data).

Values are those of hendrycks/robustness ``make_imagenet_c.py`` (224 px) and ``make_cifar_c.py``
(32 px); each tuple lists severities 1 to 5 in the order the reference code unpacks them.
"""

from __future__ import annotations

# The 15 benchmark corruptions, in the order every ImageNet-C script and the AlexNet table use.
COMMON: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
# Hold-out ("validation") corruptions: never part of mCE.
HOLDOUT: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL: tuple[str, ...] = COMMON + HOLDOUT

GROUPS: dict[str, tuple[str, ...]] = {
    "noise": COMMON[0:3],
    "blur": COMMON[3:7],
    "weather": COMMON[7:11],
    "digital": COMMON[11:15],
    "hold-out": HOLDOUT,
}
# The family a hold-out corruption belongs to (it is reported separately all the same).
HOLDOUT_FAMILY: dict[str, str] = {
    "speckle_noise": "noise", "gaussian_blur": "blur", "spatter": "weather", "saturate": "digital",
}

SCALES: tuple[str, ...] = ("imagenet", "cifar")
NATIVE_SIZE: dict[str, int] = {"imagenet": 224, "cifar": 32}
# scale="auto" picks the table whose native size is nearer to the image's shorter side on a log
# scale: sqrt(32 * 224) = 84.7 px.
AUTO_SCALE_THRESHOLD = 85

_IN = 244  # make_imagenet_c.py's elastic constants use 244 where 224 was meant (authors' comment)
_CF = 32

PARAMS: dict[str, dict[str, tuple]] = {
    # sigma of additive N(0, sigma^2)
    "gaussian_noise": {"imagenet": (.08, .12, .18, .26, .38), "cifar": (.04, .06, .08, .09, .10)},
    # Poisson rate lambda: x <- Pois(lambda * x) / lambda
    "shot_noise": {"imagenet": (60, 25, 12, 5, 3), "cifar": (500, 250, 100, 75, 50)},
    # salt-and-pepper amount (fraction of values flipped)
    "impulse_noise": {"imagenet": (.03, .06, .09, .17, .27), "cifar": (.01, .02, .03, .05, .07)},
    # (disk radius, anti-alias sigma)
    "defocus_blur": {"imagenet": ((3, .1), (4, .5), (6, .5), (8, .5), (10, .5)),
                     "cifar": ((.3, .4), (.4, .5), (.5, .6), (1, .2), (1.5, .1))},
    # (sigma, max shift, iterations)
    "glass_blur": {"imagenet": ((.7, 1, 2), (.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
                   "cifar": ((.05, 1, 1), (.25, 1, 1), (.4, 1, 1), (.25, 1, 2), (.4, 1, 2))},
    # (ImageMagick radius, sigma)
    "motion_blur": {"imagenet": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
                    "cifar": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))},
    # np.arange(start, stop, step) of zoom factors; the float steps give 12 factors for (1, 1.11, .01)
    "zoom_blur": {"imagenet": ((1, 1.11, .01), (1, 1.16, .01), (1, 1.21, .02), (1, 1.26, .02), (1, 1.31, .03)),
                  "cifar": ((1, 1.06, .01), (1, 1.11, .01), (1, 1.16, .01), (1, 1.21, .01), (1, 1.26, .01))},
    # (loc, scale, zoom, threshold, motion radius, motion sigma, image weight)
    "snow": {"imagenet": ((.1, .3, 3, .5, 10, 4, .8), (.2, .3, 2, .5, 12, 4, .7), (.55, .3, 4, .9, 12, 8, .7),
                          (.55, .3, 4.5, .85, 12, 8, .65), (.55, .3, 2.5, .85, 12, 12, .55)),
             "cifar": ((.1, .2, 1, .6, 8, 3, .95), (.1, .2, 1, .5, 10, 4, .9), (.15, .3, 1.75, .55, 10, 4, .9),
                       (.25, .3, 2.25, .6, 12, 6, .85), (.3, .3, 1.25, .65, 14, 12, .8))},
    # (image weight, frost weight)
    "frost": {"imagenet": ((1, .4), (.8, .6), (.7, .7), (.65, .7), (.6, .75)),
              "cifar": ((1, .2), (1, .3), (.9, .4), (.85, .4), (.75, .45))},
    # (strength, wibble decay)
    "fog": {"imagenet": ((1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4)),
            "cifar": ((.2, 3), (.5, 3), (.75, 2.5), (1, 2), (1.5, 1.75))},
    # added to HSV value
    "brightness": {"imagenet": (.1, .2, .3, .4, .5), "cifar": (.05, .1, .15, .2, .3)},
    # contrast factor around the per-channel mean
    "contrast": {"imagenet": (.4, .3, .2, .1, .05), "cifar": (.75, .5, .4, .3, .15)},
    # (alpha, sigma, affine jitter) in pixels
    "elastic_transform": {
        "imagenet": ((_IN * 2, _IN * .7, _IN * .1), (_IN * 2, _IN * .08, _IN * .2), (_IN * .05, _IN * .01, _IN * .02),
                     (_IN * .07, _IN * .01, _IN * .02), (_IN * .12, _IN * .01, _IN * .02)),
        "cifar": ((_CF * 0, _CF * 0, _CF * .08), (_CF * .05, _CF * .2, _CF * .07), (_CF * .08, _CF * .06, _CF * .06),
                  (_CF * .1, _CF * .04, _CF * .05), (_CF * .1, _CF * .03, _CF * .03)),
    },
    # down-scale factor
    "pixelate": {"imagenet": (.6, .5, .4, .3, .25), "cifar": (.95, .9, .85, .75, .65)},
    # JPEG quality
    "jpeg_compression": {"imagenet": (25, 18, 15, 10, 7), "cifar": (80, 65, 58, 50, 40)},
    # sigma of multiplicative noise: x + x * N(0, sigma^2)
    "speckle_noise": {"imagenet": (.15, .2, .35, .45, .6), "cifar": (.06, .1, .12, .16, .2)},
    # sigma
    "gaussian_blur": {"imagenet": (1, 2, 3, 4, 6), "cifar": (.4, .6, .7, .8, 1)},
    # (loc, scale, blur sigma, threshold, intensity, mode 0=water 1=mud)
    "spatter": {"imagenet": ((.65, .3, 4, .69, .6, 0), (.65, .3, 3, .68, .6, 0), (.65, .3, 2, .68, .5, 0),
                             (.65, .3, 1, .65, 1.5, 1), (.67, .4, 1, .65, 1.5, 1)),
                "cifar": ((.62, .1, .7, .7, .5, 0), (.65, .1, .8, .7, .5, 0), (.65, .3, 1, .69, .5, 0),
                          (.65, .1, .7, .69, .6, 1), (.65, .1, .5, .68, .6, 1))},
    # (saturation multiplier, saturation offset)
    "saturate": {"imagenet": ((.3, 0), (.1, 0), (2, 0), (5, .1), (20, .2)),
                 "cifar": ((.3, 0), (.1, 0), (1.5, 0), (2, .1), (2.5, .2))},
}
