"""sbatch templates of cluster.render (package data)."""
