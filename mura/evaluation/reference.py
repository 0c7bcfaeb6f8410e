"""Published numbers to compare with, quoted from Rajpurkar et al., "MURA: Large Dataset for Abnormality
Detection in Musculoskeletal Radiographs" (arXiv 1712.06957), Table 2: Cohen's kappa against the radiologist
gold standard on the hidden MURA test set (207 studies). Only the model's finger, wrist and overall rows
carry 95% CIs in the paper."""

from __future__ import annotations

PAPER_SOURCE = "Rajpurkar et al. 2017 (arXiv 1712.06957), Table 2, hidden test set"

# body part -> (radiologist 1, radiologist 2, radiologist 3, model, model 95% CI or None)
PAPER_KAPPA: dict[str, tuple[float, float, float, float, tuple[float, float] | None]] = {
    "XR_ELBOW": (0.850, 0.710, 0.719, 0.710, None),
    "XR_FINGER": (0.304, 0.403, 0.410, 0.389, (0.332, 0.446)),
    "XR_FOREARM": (0.796, 0.802, 0.798, 0.737, None),
    "XR_HAND": (0.661, 0.927, 0.789, 0.851, None),
    "XR_HUMERUS": (0.867, 0.733, 0.933, 0.600, None),
    "XR_SHOULDER": (0.864, 0.791, 0.864, 0.729, None),
    "XR_WRIST": (0.791, 0.931, 0.931, 0.931, (0.922, 0.940)),
    "overall": (0.731, 0.763, 0.778, 0.705, (0.700, 0.710)),
}
