"""Building blocks that several methods share, for bundled and third-party plugins alike.

Nothing in the core's trainer depends on them; they are here so that a method is written once:

* :mod:`~zsqbench.toolkit.logits`: Hinton KD as the ZSQ codes compute it, a logit-only objective;
* :mod:`~zsqbench.toolkit.bn_stats`: the teacher BN-statistics loss (GDFQ, AdaDFQ, HAST, ...);
* :mod:`~zsqbench.toolkit.energy`: feature-map energies (mean of F²) in one node (attention losses, HAST);
* :mod:`~zsqbench.toolkit.cifar_generator`: GDFQ's label-conditioned CIFAR generator network;
* :mod:`~zsqbench.toolkit.online`: that network trained online with Adam (GDFQ and its descendants,
  HAST's calibration generator) and the generator-plugin base built on it;
* :mod:`~zsqbench.toolkit.cache`: a verified, content-addressed cache of tensors (synthetic sets);
* :mod:`~zsqbench.toolkit.synthesis`: the pixel-synthesis engine and cached, resumable sets (HAST,
  ZeroQ, IntraQ), with :mod:`~zsqbench.toolkit.augment` (crop + flip);
* :mod:`~zsqbench.toolkit.offline`: the offline fine-tuning scaffold that serves such a set.
"""
