"""clipcl: continual learning of CLIP models, from one chain to sweeps on Ray and Slurm."""

__version__ = "0.1.0"
