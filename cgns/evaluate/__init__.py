"""Evaluations of a pretrained image-text model beyond the downstream heads, and the whole table in one command.

    python -m cgns.evaluate zeroshot  --checkpoint CKPT --dataset {chexpert,rsna,covidx} --output-dir DIR
    python -m cgns.evaluate retrieval --checkpoint CKPT --output-dir DIR
    python -m cgns.evaluate grounding --checkpoint CKPT --output-dir DIR [--data-root MIMIC_CXR_JPG] [--csv MS_CXR]
    python -m cgns.evaluate all       --checkpoint CKPT --seeds 0 1 2 --output-dir DIR

Pieces: selection (the 5xN sets), prompts (+ prompts.json), images, zeroshot, retrieval, grounding, table
(the resumable whole table), cli (flags and the cell runner). The model is read through cgns.load_model.
"""
