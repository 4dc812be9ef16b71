"""The tenant probe's report: its checks, what it found, and the one screen a deployer reads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"
#: Lines of details shown under a check; the rest are in the JSON report.
SHOWN = 5


@dataclass
class Check:
    """One line of the report: what was checked, how it went, and what a deployer should know."""

    name: str
    status: str
    summary: str
    details: list[str] = field(default_factory=list)


@dataclass
class Capability:
    """What the probe found about one Part 2 capability."""

    name: str
    declared: bool
    detected: str
    evidence: str
    method: str


@dataclass
class Exchange:
    """One HTTP exchange the probe's client made (retries and token refreshes included)."""

    method: str
    path: str
    status: int
    seconds: float


@dataclass
class ProbeReport:
    """Everything the probe found; ``ok`` is False when something would stop the product working."""

    base_url: str
    api_version: str
    auth: str
    checks: list[Check] = field(default_factory=list)
    locations: dict[str, Any] = field(default_factory=dict)
    contacts: dict[str, Any] = field(default_factory=dict)
    capabilities: list[Capability] = field(default_factory=list)
    schema: dict[str, Any] = field(default_factory=dict)
    latency_ms: dict[str, Any] = field(default_factory=dict)
    rate_limit: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No check failed."""
        return not self.failures

    @property
    def failures(self) -> list[Check]:
        """The checks that would stop the product working."""
        return [c for c in self.checks if c.status == FAIL]

    @property
    def warnings(self) -> list[Check]:
        """The checks a deployer should look at."""
        return [c for c in self.checks if c.status == WARN]

    def check(self, name: str) -> Check | None:
        """The first check of that name."""
        return next((c for c in self.checks if c.name == name), None)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data (what ``--json`` prints)."""
        out = asdict(self)
        out["ok"] = self.ok
        out["verdict"] = self.verdict()
        return out

    def verdict(self) -> str:
        """One sentence: ready or not, and why."""
        if self.ok:
            extra = (
                f" ({len(self.warnings)} warning{'s' if len(self.warnings) != 1 else ''})"
                if self.warnings
                else ""
            )
            return f"READY: the product can work with this tenant{extra}."
        names = ", ".join(c.name for c in self.failures)
        return f"NOT READY: {len(self.failures)} problem{'s' if len(self.failures) != 1 else ''} would stop the product ({names})."

    def render(self) -> str:
        """The report as a deployer reads it: one screen, the verdict last."""
        lines = [f"Podium tenant probe: {self.base_url} (podium-version {self.api_version}, {self.auth})", ""]
        width = max([len(c.name) for c in self.checks] + [10])
        for c in self.checks:
            lines.append(f"  {c.status.upper():<5} {c.name:<{width}}  {c.summary}")
            shown = c.details[:SHOWN]
            lines.extend(f"  {'':<5} {'':<{width}}    - {d}" for d in shown)
            if len(c.details) > len(shown):
                lines.append(
                    f"  {'':<5} {'':<{width}}    … and {len(c.details) - len(shown)} more (see --json)"
                )
        lines += ["", self.verdict()]
        return "\n".join(lines)
