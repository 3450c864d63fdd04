"""Compare pretraining objectives on equal terms: the same data, encoders, loop and budget, several seeds.

    python -m cgns.benchmark --methods cgns convirt gloria mgca --seeds 0 1 2 --output-dir DIR
    python -m cgns.benchmark --methods cgns cgns-no-cgns cgns@w3=0.5 cgns-no-cgns@w3=0.5 --reference cgns-no-cgns ...

Per method and pretraining seed: `train_pretrain.py` (a finished run is reused, an unfinished one resumes), then
`python -m cgns.evaluate all` on its checkpoint; per seed also on random init. Then one table (Markdown, CSV, a
plot): each task and fraction, mean ± standard deviation over pretraining seeds, and each method's paired
difference against the reference (ConVIRT by default) with a 95% t-interval.

Pieces: methods (the method -> flags table), plan (the runs, their folders, commands and states), estimate (the
expected CPU time), stats (mean ± std, paired t-interval), compare (the table), cli (flags, runners, the loop).
"""
