"""TEST ONLY: makes the vertical-LR guest node that starts with this folder on PYTHONPATH lie.

Used by ``tests/test_learning_attacks_stack.py`` (issue 12, finding 2: "the arbiter trusts
the guest"), which gives this folder to one node process only (``NodeSpec.env``). Never part
of a deployment. ``FEDGOV_TEST_LIAR`` names a folder; the file ``mode`` there (read at every
job, so one federation can run several attacks) says what the guest does:

- ``hello-coalitions``: its hello claims an evaluation and a Shapley re-scoring (one coalition
  per non-empty proper subset of hosts) although the signed manifest says ``shapley = false``,
  and after the evaluation it sends those coalition requests;
- ``quiet-coalitions``: an honest hello, then the same coalition requests;
- ``grad-score``: in its last epoch's first gradient step it sends, instead of its masked
  gradient, one host's encrypted per-row partial scores of the batch as a full-vector score
  request (one slot per row, no block sum);
- anything else (or no file): honest.

Whatever the arbiter decrypts for it is written to ``loot-<job>.json`` in that folder (the
coalition AUCs, or the host's per-row partial scores): the attack succeeded iff that file
exists. Then the next ``sitecustomize.py`` further along ``sys.path`` runs (the protection
checker's hook, scripts/protection_hook), so a switched-off guard is off here too.
"""

import importlib.util
import json
import os
import sys
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))


def _chain() -> None:
    for d in sys.path:
        path = os.path.join(d or ".", "sitecustomize.py")
        if os.path.abspath(d or ".") != _HERE and os.path.isfile(path):
            spec = importlib.util.spec_from_file_location("_chained_sitecustomize", path)
            if spec and spec.loader:
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


def _install(folder: Path) -> None:
    import numpy as np

    from fedgov.errors import FedgovError
    from fedgov.node.kinds import vertical_lr as node
    from fedgov.protocols import vertical_lr as vlr

    job: dict[str, str] = {}

    def mode() -> str:
        try:
            return (folder / "mode").read_text().strip()
        except FileNotFoundError:
            return ""

    def loot(obj: object) -> None:
        (folder / f"loot-{job.get('id', 'unknown')}.json").write_text(json.dumps(obj))

    hello = node._hello

    def lying_hello(ctx, arbiter, info):  # noqa: ANN001, ANN202
        job["id"] = ctx.job_id  # every party says hello before anything the arbiter decrypts
        if mode() == "hello-coalitions" and "batches" in info and "eval" in info:  # the guest, training
            _, hosts = node.guest_and_hosts(ctx)
            info = {**info, "eval": True, "coalitions": 2 ** len(hosts) - 2}
        return hello(ctx, arbiter, info)

    score_rows = node._score_rows

    def lying_score_rows(ctx, model, x, public, guest, hosts, arbiter, *, labels=None, coalitions=None):  # noqa: ANN001, ANN202
        if ctx.me == guest and labels is not None and mode() in ("hello-coalitions", "quiet-coalitions"):
            got: dict[str, float] = {}
            out = score_rows(ctx, model, x, public, guest, hosts, arbiter, labels=labels, coalitions=got)
            loot({"coalitions": got})
            if coalitions is not None:
                coalitions.update(got)
            return out
        return score_rows(ctx, model, x, public, guest, hosts, arbiter, labels=labels, coalitions=coalitions)

    residual = vlr.Guest.residual_for_hosts

    def residual_for_hosts(self, epoch, batch, host_scores):  # noqa: ANN001, ANN202
        self._liar_scores = dict(host_scores)
        return residual(self, epoch, batch, host_scores)

    masked_gradient = vlr.Guest.masked_gradient

    def lying_masked_gradient(self, epoch, batch):  # noqa: ANN001, ANN202
        if mode() == "grad-score" and epoch == self.params.epochs - 1 and batch == 0:
            victim = sorted(self._liar_scores)[0]
            _, rows = self._batch_rows(epoch, batch)
            self._liar_pending = (victim, len(rows))
            self._liar_mask, blob = vlr._mask_total(
                self.ctx, np.zeros(len(rows)), {victim: self._liar_scores[victim]}, [victim], self.params, self.name
            )
            return blob
        return masked_gradient(self, epoch, batch)

    apply_unmasked = vlr.Guest.apply_unmasked

    def lying_apply_unmasked(self, reply):  # noqa: ANN001, ANN202
        pending = getattr(self, "_liar_pending", None)
        if pending is None:
            return apply_unmasked(self, reply)
        victim, n = pending
        stolen = vlr._unmask_total(reply, self._liar_mask)[:n]
        loot({"host": victim, "partial_scores": [float(v) for v in stolen]})
        raise FedgovError(f"lying guest: took {n} per-row partial scores of {victim}")

    node._hello = lying_hello
    node._score_rows = lying_score_rows
    vlr.Guest.residual_for_hosts = residual_for_hosts
    vlr.Guest.masked_gradient = lying_masked_gradient
    vlr.Guest.apply_unmasked = lying_apply_unmasked


_chain()
if os.environ.get("FEDGOV_TEST_LIAR"):
    _install(Path(os.environ["FEDGOV_TEST_LIAR"]))
