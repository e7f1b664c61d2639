"""Recording: what the aggregator writes to the store about its job, named by what happened.

The store (``fedmq.store``) knows tables; this knows the job being run (its row, the open round's
row) and turns each event of the federation into the one store call that records it. Every call is
its own transaction, so whatever stops the aggregator, the store holds whole events only.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..schemas import JobSpec, Update
from ..store import Store
from .config import AggregatorConfig
from .policy import Admission


class JobRecord:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.job_id = 0
        self.round_id = 0  # the store's row of the open round (or of the last one opened)

    # -- the job ------------------------------------------------------------------------------------
    def open_job(self, config: AggregatorConfig, new_spec: JobSpec) -> tuple[JobSpec, int | None]:
        """The job's spec for this run, and the rounds it completed before (None: a new job).

        A new job is created with ``new_spec``. A stored one is resumed with this run's settings,
        after checking that it is the same task and model (a run that names no ``--model`` takes the
        stored one) and still has rounds to go. It resumes running if it had started (its task's
        defaults fixed, so its batch size known), else it waits for its silos again."""
        job = self.store.find_job(config.job)
        if job is None:
            self.job_id = self.store.create_job(config.job, new_spec.run_id, new_spec.model_dump()).id
            return new_spec, None
        stored = JobSpec.model_validate(job.spec)
        if stored.task != config.task or config.model is not None and stored.model != config.model:
            raise ConfigError(
                f"job {config.job!r} in the store is a {stored.task} job with model {stored.model or 'the default'}",
                hint="use the same --task and --model to resume it, or another --job name",
            )
        last = self.store.last_completed_round(job.id)
        done = last.number if last else 0
        if done >= config.rounds:
            raise ConfigError(f"job {config.job!r} already completed {done} round(s)",
                              hint=f"pass --rounds above {done} to train further, or use another --job name")
        self.job_id = job.id
        spec = stored.model_copy(update={"run_id": new_spec.run_id, "rounds": config.rounds, "signed": config.sign,
                                         "secure_agg": config.secure_agg,
                                         "mu": config.mu, "codec": config.codec,
                                         "task_options": config.task_options or stored.task_options,
                                         "status": "running" if stored.batch_size is not None else "waiting",
                                         "reason": None, "upload_grants": True})
        return spec, done

    def resumed(self, done: int) -> None:
        """The job resumes after round ``done`` (its lease held): the rounds its last run left open are
        marked interrupted, and those before ``done`` whose evaluation a stop cut short (async mode can
        complete a later version first) are completed with the evaluations they got."""
        from .evaluation import weighted_metrics

        self.store.interrupt_rounds_after(self.job_id, done)
        for round_id, results in self.store.evaluating_before(self.job_id, done):
            self.store.complete_round(round_id, weighted_metrics(results))

    def completed_metrics(self, job: str, through: int) -> list[dict[str, Any]]:
        """The recorded metrics of the job's completed rounds up to ``through``, in order."""
        return [r["metrics"] for r in self.store.history(job) if r["status"] == "completed" and r["round"] <= through]

    def job(self, spec: JobSpec) -> None:
        self.store.update_job(self.job_id, spec.model_dump())

    def silo(self, name: str, online: bool) -> None:
        self.store.set_silo(self.job_id, name, online)

    def online_silos(self) -> set[str]:
        """The silos the store last saw online for this job (at a resume: the ones to wait for)."""
        return self.store.online_silos(self.job_id)

    # -- rounds ---------------------------------------------------------------------------------------
    def open_round(self, number: int) -> int:
        self.round_id = self.store.open_round(self.job_id, number)
        return self.round_id

    def accepted(self, update: Update, admission: Admission, size: int) -> None:
        self.store.record_update(self.job_id, self.round_id, update.silo, accepted=True, claimed_round=update.round,
                                 num_samples=update.num_samples, train_loss=update.train_loss,
                                 train_seconds=update.train_seconds, size=size,
                                 base_version=admission.base.version, staleness=admission.staleness)

    def rejected(self, silo: str, reason: str, update: Update | None, size: int, in_round: bool) -> None:
        """A rejected update, in the open round's record if one is open (``in_round``)."""
        self.store.record_update(
            self.job_id, self.round_id if in_round else None, silo, accepted=False, reason=reason,
            claimed_round=update.round if update else None, num_samples=update.num_samples if update else 0, size=size,
        )

    def refused(self, silo: str, reason: str, in_round: bool) -> None:
        """A silo refused at join (its model differs from the job's), as a rejection of no update."""
        self.rejected(silo, f"refused at join: {reason}", None, 0, in_round)

    def evaluation_failed(self, round_id: int, silo: str, reason: str, claimed_round: int) -> None:
        """A silo's task failed to evaluate round ``claimed_round`` (row ``round_id``): a rejection there."""
        self.store.record_update(self.job_id, round_id, silo, accepted=False, reason=reason,
                                 claimed_round=claimed_round)

    def aggregated(self, num_samples: int, digest: str, checkpoint: str) -> None:
        self.store.mark_aggregated(self.round_id, num_samples, digest, checkpoint)

    def evaluation(self, round_id: int, silo: str, num_samples: int, metrics: dict[str, float]) -> None:
        self.store.record_evaluation(round_id, silo, num_samples, metrics)

    def failed(self, metrics: dict[str, float] | None = None) -> None:
        """The open round could not complete (``RoundFailed``: the job's spec holds the reason; a secure round
        that could not be unmasked: its rejections do, and ``metrics`` say what dropped where)."""
        self.store.fail_round(self.round_id, metrics)

    def completed(self, round_id: int, metrics: dict[str, float]) -> None:
        self.store.complete_round(round_id, metrics)
