"""Targets for `realfake.jobs.tasks.launch.launch` in tests: they run in the launched processes, so they
live in an importable module (not a test file), which imports the training code at its top so that the
launcher's forkserver has it loaded once for every process."""
import hashlib
import json
import os
from pathlib import Path

from realfake.engines import distributed, trainer
from realfake.jobs.tasks.train import run_train


def recorded_train(record_dir: Path, data_dir: Path, out: Path, name: str, options: dict) -> dict:
    """run_train as one process of the group, recording per epoch the train indices this process read and a
    sha256 of its trainable weights (the model's and the region-loss head's) after the epoch's last step,
    into RECORD_DIR/rankR.json."""
    original, epochs = trainer.train_one_epoch, {}

    def recording(model, criterion, optimizer, loader, device, epoch, **kwargs):
        indices = []

        class Recorder:
            def __len__(self):
                return len(loader)

            def __iter__(self):
                for batch in loader:
                    indices.extend(batch.indices.tolist())
                    yield batch

        result = original(model, criterion, optimizer, Recorder(), device, epoch, **kwargs)
        trained = list(model.parameters())
        if kwargs.get("aux_loss") is not None:
            trained += list(kwargs["aux_loss"].parameters())
        digest = hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in trained)).hexdigest()
        epochs[epoch] = {"indices": indices, "weights": digest, "result": list(result)}
        return result

    trainer.train_one_epoch = recording
    summary = run_train(data_dir, out=out, name=name, **options)
    (Path(record_dir) / f"rank{os.environ['RANK']}.json").write_text(json.dumps(epochs))
    return summary


def fails_on_rank_one(message: str) -> None:
    """Joins the group; process 1 raises ValueError(message) while process 0 waits at a barrier for it."""
    distributed.init("cpu")
    if distributed.rank() == 1:
        raise ValueError(message)
    distributed.barrier()

