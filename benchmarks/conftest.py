import sys
from pathlib import Path

# Benchmarks share the dataset generators in this folder.
sys.path.insert(0, str(Path(__file__).parent))
