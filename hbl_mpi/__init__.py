"""hbl_mpi: high-bypass learning as one MPI program.

Train a tree of Uno drug-response models on growing subsets of the cell lines, fork
every child from its parent's weights and optimizer state over MPI point-to-point
buffers, and rank cell lines by how much they hurt learning.
"""

__version__ = "0.1.0"
