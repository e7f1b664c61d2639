"""Topic names: the only place where the shape of a fedmq topic is spelled.

Every topic a silo writes ends in its own silo name, so a broker ACL keyed on the MQTT username
(``fedmq/+/update/%u``) can confine it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError

ROOT = "fedmq"
ANY_JOB = "+"  # the job level of Topics.every_job(), for broker ACLs only; never a job's real name
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def check_name(kind: str, value: str) -> str:
    """Job and silo names become topic levels, so they may not hold MQTT wildcards or slashes."""
    if not _NAME.fullmatch(value):
        raise ConfigError(
            f"invalid {kind} name {value!r}",
            hint="use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return value


@dataclass(frozen=True)
class Topics:
    """The topics of one job."""

    job: str

    def __post_init__(self) -> None:
        check_name("job", self.job)

    @classmethod
    def every_job(cls) -> Topics:
        """The topics of all jobs at once (the job level is ``+``): for broker ACLs, not for publishing."""
        topics = object.__new__(cls)
        object.__setattr__(topics, "job", ANY_JOB)
        return topics

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{self.job}"

    # aggregator -> silos
    @property
    def init(self) -> str:
        """The job spec, retained, so a silo that connects at any time learns the job."""
        return f"{self.prefix}/init"

    @property
    def init_request(self) -> str:
        """Asks one named silo for the initial weights it builds from the job's model and seed."""
        return f"{self.prefix}/init/request"

    @property
    def model(self) -> str:
        """Global model sync: the weights of one model version, and the round to train on them."""
        return f"{self.prefix}/model"

    def model_for(self, silo: str) -> str:
        """Global model sent to one silo alone: a late joiner, or a silo that came back."""
        return f"{self.prefix}/model/{check_name('silo', silo)}"

    @property
    def test(self) -> str:
        """Test request: evaluate the global model of a round on the local test split."""
        return f"{self.prefix}/test"

    @property
    def status(self) -> str:
        """Where the job stands (phase, round, updates in), retained, for anyone watching: `fedmq status`."""
        return f"{self.prefix}/status"

    # secure aggregation (--secure-agg, schemas/secagg.py)
    @property
    def secagg(self) -> str:
        """Secure aggregation's steps, to every silo of the round: setup, key list, unmask request, abort."""
        return f"{self.prefix}/secagg"

    def secagg_inbox(self, silo: str) -> str:
        """The encrypted shares the other silos dealt to one silo, forwarded by the aggregator."""
        return f"{self.prefix}/secagg-inbox/{check_name('silo', silo)}"

    def secagg_from(self, silo: str) -> str:
        """A silo's answers in secure aggregation: its round keys, its encrypted shares, its reveal."""
        return f"{self.prefix}/secagg/{check_name('silo', silo)}"

    @property
    def all_secagg(self) -> str:
        return f"{self.prefix}/secagg/+"

    @property
    def all_secagg_inboxes(self) -> str:
        return f"{self.prefix}/secagg-inbox/+"

    # silos -> aggregator
    def grant(self, silo: str) -> str:
        """The aggregator's upload grants to one silo (upload flow control)."""
        return f"{self.prefix}/grant/{check_name('silo', silo)}"

    @property
    def all_grants(self) -> str:
        return f"{self.prefix}/grant/+"

    def update(self, silo: str) -> str:
        return f"{self.prefix}/update/{check_name('silo', silo)}"

    def result(self, silo: str) -> str:
        return f"{self.prefix}/result/{check_name('silo', silo)}"

    def presence(self, silo: str) -> str:
        """Retained online/offline state; the broker publishes offline as the silo's last will."""
        return f"{self.prefix}/presence/{check_name('silo', silo)}"

    @property
    def all_updates(self) -> str:
        return f"{self.prefix}/update/+"

    @property
    def all_results(self) -> str:
        return f"{self.prefix}/result/+"

    @property
    def all_presence(self) -> str:
        return f"{self.prefix}/presence/+"

    def aggregator_subscriptions(self) -> list[str]:
        return [self.all_updates, self.all_results, self.all_presence, self.all_secagg]

    def silo_subscriptions(self, silo: str) -> list[str]:
        """What a silo reads: the job, its requests, the models, and its own presence (to undo a stale last
        will of an earlier connection that marked it offline)."""
        return [self.init, self.init_request, self.model, self.model_for(silo), self.test, self.presence(silo),
                self.grant(silo), self.secagg, self.secagg_inbox(silo)]

    def observer_subscriptions(self) -> list[str]:
        """What `fedmq status` reads: the job spec, every silo's presence, the aggregator's status; all retained."""
        return [self.init, self.all_presence, self.status]

    # who may write what: a broker ACL grants exactly these and the subscriptions above (broker/auth.py)
    @property
    def all_direct_models(self) -> str:
        return f"{self.prefix}/model/+"

    def silo_publishes(self, silo: str) -> list[str]:
        """Every topic a silo writes; each names the silo, so an ACL can confine it to its own."""
        return [self.update(silo), self.result(silo), self.presence(silo), self.secagg_from(silo)]

    def aggregator_publishes(self) -> list[str]:
        return [self.init, self.init_request, self.model, self.all_direct_models, self.test, self.status, self.secagg,
                self.all_secagg_inboxes, self.all_grants]

    def silo_of(self, topic: str) -> str | None:
        """The silo named by a silo-written topic (update, result, presence, secagg) of this job, else None."""
        parts = topic.split("/")
        if len(parts) == 4 and f"{parts[0]}/{parts[1]}" == self.prefix and parts[2] in ("update", "result", "presence",
                                                                                        "secagg"):
            return parts[3] if _NAME.fullmatch(parts[3]) else None
        return None
