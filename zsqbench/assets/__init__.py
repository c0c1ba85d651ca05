"""What a trial reads: test sets (CIFAR, ImageNet and its cache), teachers, downloads, safe unpickling."""
