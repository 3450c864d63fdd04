"""python -m cgns.synthetic: write the generated world (see cgns.synthetic)."""
from cgns.synthetic import main

main()
