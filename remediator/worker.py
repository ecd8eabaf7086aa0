"""Executes journaled runs: claim, guard, execute, record — on any replica sharing the journal.

A claimed run is held by a lease (`lease_until` in the journal) that a heartbeat renews from the
claim until its outcome is recorded. The heartbeat counts each lease from when the claim or
renewal that set it was sent, and gives each renewal only the time left before a cutoff a third
of a lease ahead of expiry: if the lease cannot be confirmed by then, or the journal says the
run is no longer ours, the run is cancelled (its SQL rolls back, its outcome is not written)
while the lease still holds, before another replica may settle or re-run it. The per-playbook
guards (cooldown, circuit breaker) are one atomic reservation in the journal (see
`Journal.reserve`): workers and replicas pass them one at a time, exclusive playbooks or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from remediator.config import Playbook, Setup
from remediator.engine import Engine, Report, kept_effects
from remediator.journal import PRUNE_BATCH, Journal, JournalUnavailable, Run
from remediator.metrics import Metrics
from remediator.pause import Pauses

log = logging.getLogger("taskmedic.remediator.worker")

BUSY_RETRY = 1.0  # seconds before a run whose playbook is running elsewhere is claimed again
LOOP_BACKOFF = 1.0  # seconds before a background loop tries again after an unexpected error
FINISH_ATTEMPTS = 5
PRUNE_EVERY = 300.0  # seconds between retention passes (sooner while a backlog is being deleted)
PRUNE_BATCHES = 10  # statements of PRUNE_BATCH rows per pass


@dataclass
class Lease:
    """What a run's heartbeat knows of its lease, on this replica's monotonic clock."""

    expires: float  # the journal's lease_until at the latest: when the claim/renewal setting it was sent + lease
    settling: bool = False  # the run is being recorded or handed back: it stops being ours on purpose
    report: Report | None = None  # the run's steps so far, journaled with every renewal


class Worker:
    def __init__(self, setup: Setup, journal: Journal, engine: Engine, metrics: Metrics) -> None:
        self.playbooks = {p.name: p for p in setup.playbooks}
        self.settings = setup.settings
        self.journal = journal
        self.engine = engine
        self.metrics = metrics
        self.pauses = Pauses(journal)
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(self.settings.workers)
        self._active: dict[int, asyncio.Task[None]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._next_prune = 0.0

    def reconfigure(self, setup: Setup) -> None:
        """Take reloaded playbooks and settings: runs claimed from now on use them; a run already
        executing finishes with the playbook it started with."""
        self.playbooks = {p.name: p for p in setup.playbooks}
        self.settings = setup.settings
        self.engine.systems = setup.config.systems
        self.engine.disks, self.engine.backups = setup.config.disks, setup.config.backups

    def start(self) -> None:
        self._loops = [asyncio.create_task(self._claim_loop(), name="claim"),
                       asyncio.create_task(self._maintain_loop(), name="maintain")]
        for loop in self._loops:
            loop.add_done_callback(self._loop_ended)

    @staticmethod
    def _loop_ended(loop: asyncio.Task[None]) -> None:
        if not loop.cancelled() and loop.exception() is not None:
            log.critical("worker loop %r stopped; this replica no longer runs playbooks (/readyz is 503)",
                         loop.get_name(), exc_info=loop.exception())

    def stopped_loops(self) -> list[str]:
        """Background loops that have ended (on shutdown, or by an error they could not survive)."""
        return [loop.get_name() for loop in self._loops if loop.done()]

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, grace: float) -> None:
        """Stop claiming, give running runs `grace` seconds, cancel the rest and release them."""
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        running = dict(self._active)
        if running:
            log.info("waiting for %d running runs", len(running), extra={"grace_seconds": grace})
            _done, late = await asyncio.wait(running.values(), timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            cut = [run_id for run_id, task in running.items() if task in late]
            if cut:
                log.warning("runs cut short by shutdown; their SQL was rolled back", extra={"run_ids": cut})
                with contextlib.suppress(JournalUnavailable):
                    await self.journal.release(cut)

    async def _claim_loop(self) -> None:
        while True:
            await self._slots.acquire()
            self._wake.clear()
            claimed_at = time.monotonic()  # the lease the claim sets is counted from here
            try:
                run = await self.journal.claim(list(self.playbooks))
            except JournalUnavailable as e:
                log.warning("journal unavailable; cannot claim runs", extra={"error": str(e)})
                run = None
            except Exception:  # a bug or an unreadable row: log it, and keep claiming the others
                log.exception("unexpected error while claiming a run; claiming again in %gs", LOOP_BACKOFF)
                self._slots.release()
                await asyncio.sleep(LOOP_BACKOFF)
                continue
            if run is None:
                self._slots.release()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)
                continue
            task = asyncio.create_task(self._handle(run, claimed_at), name=f"run-{run.id}")
            self._active[run.id] = task
            task.add_done_callback(functools.partial(self._done, run.id))

    def _done(self, run_id: int, _task: asyncio.Task[None]) -> None:
        self._active.pop(run_id, None)
        self._slots.release()

    async def _maintain_loop(self) -> None:
        while True:
            try:
                await self._recover()
                await self._refresh_circuits()
                self.metrics.show_pauses(await self.pauses.active())
                await self._prune()
                self.metrics.journal_up.set(1)
            except JournalUnavailable as e:
                self.metrics.journal_up.set(0)
                log.warning("journal unavailable", extra={"error": str(e)})
            except Exception:  # a bug or an unreadable row: log it, and keep settling the others
                log.exception("unexpected error while settling interrupted runs; trying again")
            await asyncio.sleep(max(0.5, self.settings.lease / 3))

    def _may_retry(self, run: Run) -> bool:
        playbook = self.playbooks.get(run.playbook)
        return playbook is not None and playbook.retry_interrupted and run.attempts < playbook.max_attempts

    async def _recover(self) -> None:
        settled = await self.journal.recover(self._may_retry, exclude=list(self._active))
        for run, retried in settled:
            self.metrics.runs.labels(run.playbook, "interrupted").inc()
            log.warning("run interrupted: its replica stopped mid-run", extra={
                "run_id": run.id, "playbook": run.playbook, "replica": run.row["replica"],
                "attempt": run.attempts, "retried": retried})
        if any(retried for _run, retried in settled):
            self.wake()

    async def _prune(self) -> None:
        if time.monotonic() < self._next_prune:
            return
        deleted = await self.journal.prune(self.settings.retention, PRUNE_BATCHES)
        self._next_prune = time.monotonic() + (0 if deleted >= PRUNE_BATCHES * PRUNE_BATCH else PRUNE_EVERY)
        if deleted:
            log.info("pruned finished runs older than the retention period", extra={
                "deleted": deleted, "retention_seconds": self.settings.retention})

    async def _refresh_circuits(self) -> None:
        counts = await self.journal.runs_last_hour()
        for name, playbook in self.playbooks.items():
            if playbook.max_runs_per_hour is not None:
                self.metrics.circuit.labels(name).set(int(counts.get(name, 0) >= playbook.max_runs_per_hour))

    async def _handle(self, run: Run, claimed_at: float) -> None:
        playbook = self.playbooks[run.playbook]
        lease = Lease(expires=claimed_at + self.journal.lease)
        heartbeat = asyncio.create_task(self._keep_lease(run, asyncio.current_task(), lease),
                                        name=f"lease-{run.id}")
        started = time.monotonic()
        try:
            async with self._exclusive(playbook) as got:
                if not got:
                    lease.settling = True
                    await self.journal.requeue(run.id, BUSY_RETRY)
                    return
                report = await self._guarded(run, playbook, lease)
                lease.settling = True
                await self._finish(run, report, time.monotonic() - started)  # still under the heartbeat
        except JournalUnavailable as e:
            log.error("journal unavailable during a run; its lease will expire and it will be settled as "
                      "interrupted", extra={"run_id": run.id, "playbook": run.playbook, "error": str(e)})
        finally:
            heartbeat.cancel()

    @contextlib.asynccontextmanager
    async def _exclusive(self, playbook: Playbook) -> AsyncIterator[bool]:
        if not playbook.exclusive:
            yield True
            return
        async with self.journal.exclusive(playbook.name) as got:
            yield got

    async def _guarded(self, run: Run, playbook: Playbook, lease: Lease) -> Report:
        pause = await self.pauses.applying_to(playbook.name)
        if pause is not None:
            return Report("suppressed", error=pause.describe())
        refusal = await self.journal.reserve(run, playbook.cooldown, playbook.max_runs_per_hour)
        if refusal is not None:
            if refusal.startswith("circuit open"):
                self.metrics.circuit.labels(playbook.name).set(1)
            return Report("suppressed", error=refusal)
        report = Report("failed")  # filled as the run goes, so a timeout keeps what the steps did
        lease.report = report  # and a replica killed mid-run leaves what its steps did in the journal
        try:
            async with asyncio.timeout(playbook.timeout):
                return await self.engine.execute(playbook, run.alert, self.settings.dry_run, run.id, report)
        except TimeoutError:
            report.outcome = "failed"
            report.error = (f"timed out after {playbook.timeout:g}s; its SQL was rolled back"
                            f"{kept_effects(report.steps)}")
            return report
        except Exception as e:  # the engine fails steps itself; this is for what it did not foresee
            log.exception("run %s: unexpected error", playbook.name, extra={"run_id": run.id, "playbook": run.playbook})
            return Report("failed", error=f"{type(e).__name__}: {e}")

    async def _record(self, run: Run, report: Report, duration: float) -> bool:
        """Write the outcome, riding out a short journal outage. The heartbeat keeps renewing
        the lease meanwhile; if it cannot, it cancels this before the lease expires, and the
        run is then settled as interrupted by whichever replica recovers it."""
        for attempt in range(FINISH_ATTEMPTS):
            try:
                return await self.journal.finish(run.id, run.attempts, report.outcome, report.steps_json(),
                                                 report.error, report.dry_run, duration)
            except JournalUnavailable:
                if attempt == FINISH_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(1.0)
        return False

    async def _finish(self, run: Run, report: Report, duration: float) -> None:
        recorded = await self._record(run, report, duration)
        if not recorded:
            log.error("run finished after its lease was taken over; outcome not recorded",
                      extra={"run_id": run.id, "playbook": run.playbook, "outcome": report.outcome})
            return
        self.metrics.runs.labels(run.playbook, report.outcome).inc()
        self.metrics.duration.labels(run.playbook).observe(duration)
        log.info("run %s: %s", run.playbook, report.outcome, extra={
            "run_id": run.id, "playbook": run.playbook, "fingerprint": run.alert.fingerprint,
            "outcome": report.outcome, "error": report.error, "dry_run": report.dry_run,
            "steps": len(report.steps), "attempt": run.attempts, "duration_seconds": round(duration, 3)})

    async def _keep_lease(self, run: Run, task: asyncio.Task[None] | None, lease: Lease) -> None:
        """Renew the run's lease until its outcome is recorded (cancelled then by `_handle`).

        A renewal is sent a third of a lease after the previous successful one was sent, and a
        lease is counted from when its renewal was sent (the journal sets lease_until from its
        own now() when it runs the update, which is no earlier). Each renewal may only take until
        the cutoff, a third of a lease before the lease as last confirmed expires; a failed one is
        retried shortly. At the cutoff without a renewal, or as soon as the journal says the run
        is not ours, `task` is cancelled: its SQL rolls back and its outcome is not written while
        the lease still holds, before another replica may settle it or run it again."""
        period = self.journal.lease / 3
        retry = min(1.0, period / 3)
        next_renewal = lease.expires - self.journal.lease + period
        while True:
            await asyncio.sleep(max(0.0, next_renewal - time.monotonic()))
            cutoff = lease.expires - period
            sent = time.monotonic()
            try:
                steps = lease.report.steps_json() if lease.report is not None else None
                owned: bool | None = await asyncio.wait_for(self.journal.renew(run.id, run.attempts, steps),
                                                            max(0.0, cutoff - sent))
            except (JournalUnavailable, TimeoutError):
                owned = None
            if owned:
                lease.expires, next_renewal = sent + self.journal.lease, sent + period
                continue
            if owned is False and lease.settling:
                return  # our own finish or requeue ended the lease (or it was taken over: finish says so)
            if owned is False or time.monotonic() >= cutoff:
                if lease.settling:
                    log.error("could not keep the lease while recording a run's outcome; stopped (whoever "
                              "recovers the run settles it as interrupted)", extra={
                                  "run_id": run.id, "playbook": run.playbook, "taken_over": owned is False})
                else:
                    log.error("lost the lease of a running run; cancelling it (its SQL rolls back)", extra={
                        "run_id": run.id, "playbook": run.playbook, "taken_over": owned is False})
                if task is not None:
                    task.cancel()
                return
            next_renewal = min(time.monotonic() + retry, cutoff)
