"""Run `selftune ARGS...` and send this process a signal at a chosen point of one stage, so a
fault test can interrupt a stage at the same place every time:

    python kill_driver.py STAGE POINT SIGNAL ARGS...

POINT `output`: right after the stage records its first output (written, manifest not yet);
`checkpoint-N`: right after the stage's Nth training checkpoint is saved. SIGNAL: SIGKILL or
SIGINT (Ctrl-C).
"""

import os
import signal
import sys

stage, point, sig = sys.argv[1], sys.argv[2], getattr(signal, sys.argv[3])
current = {"stage": None}

import transformers  # noqa: E402

import selftune.run.folder  # noqa: E402


def fire() -> None:
    os.kill(os.getpid(), sig)


enter = selftune.run.folder.StageStart.__enter__


def entered(self):
    current["stage"] = self.spec.name
    return enter(self)


selftune.run.folder.StageStart.__enter__ = entered

if point == "output":
    add_output = selftune.run.folder.StageContext.add_output

    def added(self, name, path):
        result = add_output(self, name, path)
        if self.name == stage:
            fire()
        return result

    selftune.run.folder.StageContext.add_output = added
else:
    wanted, saved = int(point.split("-")[1]), {"count": 0}
    save = transformers.Trainer._save_checkpoint

    def saving(self, *args, **kwargs):
        result = save(self, *args, **kwargs)
        if current["stage"] == stage:
            saved["count"] += 1
            if saved["count"] == wanted:
                fire()
        return result

    transformers.Trainer._save_checkpoint = saving

sys.argv = ["selftune", *sys.argv[4:]]
from selftune.cli import main  # noqa: E402

main()
