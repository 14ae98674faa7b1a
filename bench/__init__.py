"""How fast lightfit trains, next to the compute floor, naive Lightning and Keras `fit()`.

    make bench                          # the full run: writes bench/results.md and bench/results.json
    make bench ARGS="--quick"           # small data, no 4 GB file: a minute or two
    python -m bench --help              # from the repository root

All cases of a workload train the same network (lightfit's `build_network`: Standardize +
MLP) on the same training rows, with the same batch size, optimizer and seed:

    floor                forward, backward and step over batches sliced before timing; nothing else
    plain-loop           the floor's loop fed by lightfit's train loader (shuffle + gather per batch)
    explicit, manual,    real `python -m lightfit.train loop=...` runs, as `make train` runs them:
      automatic            metrics, logging, checkpoints, validation, and the progress display of a
                           terminal (the run gets a pseudo-terminal)
    lightning-barebones  a minimal LightningModule, lightfit's loader, Trainer(barebones=True):
                           what Lightning itself costs per step
    naive-lightning      the minimal LightningModule fed by TensorDataset + DataLoader(shuffle=True),
                           logger, checkpoints and progress bar off (the cheapest a naive Trainer gets)
    keras                Keras 3 `fit()`, torch backend (the `bench` extra), metrics=["accuracy"]
    loader               no training: lightfit's loader vs TensorDataset + DataLoader, samples/s
    metrics              no training: microseconds per step of lightfit's metrics (the defaults of
                           each task, and [acc,f1,auroc]) next to hand-written loss and accuracy sums
    explicit+compile,    the explicit and automatic runs with `model.compile=true` (torch.compile);
      automatic+compile    the compilation falls in the first epoch, which is not counted

An epoch time is the median over the epochs after the first (a warm-up). For floor and
plain-loop it is the training pass alone. For the others it is the wall time from one
epoch's end to the next one's, so it holds all that a run does once per epoch; for
lightfit that is also the validation pass and two checkpoint writes (the synthetic
workloads keep 1% of the rows for validation and 1% for test, so training dominates).
lightfit's epoch ends are the millisecond timestamps of the epoch lines in its train.log.

Modules: `workloads` (data, network, optimizer), `cases` (what trains in this process),
`runs` (what starts `python -m lightfit.train`), `metrics` (the metrics case), `report`
(results.md and the targets), `progress` (what is shown while it runs).
"""
