"""``loopdesk simulate``: simulated customers (and experts) chatting with the bot over HTTP."""

from __future__ import annotations

import json
import secrets
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from harness.report_format import json_safe


def _clean_json(value: dict[str, Any]) -> str:
    """One line of strict JSON."""
    return json.dumps(json_safe(value), allow_nan=False)


def _expert_password(settings: Any, name: str) -> str:
    """Create an expert account for the in-process bot; returns its fresh password."""
    from feedback_store import FeedbackStore
    from feedback_store.errors import ConflictError

    password = secrets.token_urlsafe(16)
    try:
        FeedbackStore.from_settings(settings, announce=False).users.add(name, "expert", password)
    except ConflictError:
        raise click.UsageError(f"expert account {name!r} already exists; pass --expert-password") from None
    return password


@click.command("simulate")
@click.option("--customers", "n", type=click.IntRange(1), default=100, show_default=True,
              help="Number of simulated customers.")
@click.option("--concurrency", type=click.IntRange(1), default=4, show_default=True,
              help="Chats running at the same time.")
@click.option("--url", default=None,
              help="Base URL of a running bot. Default: start the bot in this process on 127.0.0.1:<free port>.")
@click.option("--held-out", is_flag=True, help="Customers open with held-out phrasings (never trained on).")
@click.option("--oracle", is_flag=True,
              help="Measure the oracle instead of the bot: a stand-in app with the same chat API that "
                   "always gives the KB's canonical reply (calibration: CSAT should be >= 4.5).")
@click.option("--experts", is_flag=True,
              help="Afterwards, a simulated expert annotates the chats rated <= --csat-max via /api/expert.")
@click.option("--expert-name", default="sim-expert", show_default=True, help="Expert console account.")
@click.option("--expert-password", default=None,
              help="Its password; without --url the account is created with a random one.")
@click.option("--csat-max", type=click.IntRange(1, 5), default=3, show_default=True,
              help="Experts review chats rated this or lower.")
@click.option("--rating-noise", type=click.FloatRange(0), default=None,
              help="Std-dev (stars) of the Gaussian rating noise [default: each persona's own, 0.5-0.8].")
@click.option("--leave-share", type=click.FloatRange(0, 1), default=0.2, show_default=True,
              help="Share of customers who leave without rating.")
@click.option("--follow-up-share", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Share of customers who ask their intent's follow-up question.")
@click.option("--out-of-scope-share", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Share of customers asking a question no help article answers (an honest decline answers it).")
@click.option("--ask-person-share", type=click.FloatRange(0, 1), default=0.25, show_default=True,
              help="Share of customers who ask for a person when the bot fails them (with no agent online they "
                   "are told that nobody is available).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every customer's choices.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object (last line).")
@click.option("--panel", is_flag=True,
              help="Gate mode for the trainer: compare --candidate-dir with the active version on the same "
                   "customers in a private sandbox; the last stdout line is "
                   '{"pass": bool, "candidate_score": float, "active_score": float, "details": {...}}.')
@click.option("--candidate-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="--panel: the candidate adapter directory (the adapter directory format of loopdesk.adapter_format, with manifest.json).")
@click.option("--active", default=None,
              help="--panel: the version to beat [default: the registry's active version; 'base' = no adapter].")
@click.option("--tolerance", type=click.FloatRange(0), default=0.1, show_default=True,
              help="--panel: pass when candidate CSAT >= active CSAT - tolerance.")
def simulate(n: int, concurrency: int, url: str | None, held_out: bool, oracle: bool, experts: bool,
             expert_name: str, expert_password: str | None, csat_max: int, rating_noise: float | None,
             leave_share: float, follow_up_share: float, out_of_scope_share: float, ask_person_share: float,
             seed: int, as_json: bool, panel: bool, candidate_dir: Path | None, active: str | None,
             tolerance: float) -> None:
    """Run simulated customers against the bot and report CSAT (mean, 95% percentile-bootstrap CI)
    overall, per intent, per adapter version and per persona, the unrated share, and the mean
    hidden-rubric score (what an expert would say).

    Gate mode, as the trainer calls it (a subprocess; exit status 0 whatever the verdict):

    \b
        loopdesk simulate --panel --candidate-dir DIR [--active VERSION] [--customers 60] [--seed 0]
    """
    from loopdesk.cli_support import settings_or_exit
    from sim.client import ChatAPIError, ExpertAPI
    from sim.company import load_company
    from sim.customers import CustomerConfig
    from sim.experts import SimulatedExpert
    from sim.oracle import create_oracle_app
    from harness.serving import local_bot, serve
    from sim.simulate import run_customers, summarize

    if oracle and (url or experts):
        raise click.UsageError("--oracle serves its own stand-in bot: it takes neither --url nor --experts")
    if panel != (candidate_dir is not None) or (panel and (url or oracle or experts)):
        raise click.UsageError("--panel needs --candidate-dir (and runs its own bot: no --url, --oracle, --experts)")
    company = load_company()
    config = CustomerConfig(held_out=held_out, follow_up_share=follow_up_share, leave_share=leave_share,
                            rating_noise=rating_noise, out_of_scope_share=out_of_scope_share,
                            ask_person_share=ask_person_share)
    if panel:
        from harness.panel import run_panel
        from loopdesk.adapter_format import InvalidAdapterError

        try:
            verdict = run_panel(settings_or_exit(), company, candidate_dir, active, n, concurrency, config, seed,
                                tolerance)
        except InvalidAdapterError as exc:
            raise click.ClickException(f"--panel refused an adapter: {exc}") from None
        click.echo(_clean_json(verdict.to_dict()))
        return
    with ExitStack() as stack:
        if oracle:
            url = stack.enter_context(serve(create_oracle_app(company)))
        elif url is None:
            settings = settings_or_exit()
            if experts and expert_password is None:
                expert_password = _expert_password(settings, expert_name)
            url = stack.enter_context(local_bot(settings))
        elif experts and expert_password is None:
            raise click.UsageError("--experts with --url needs --expert-password")
        results = run_customers(url, company, n, concurrency, config, seed, progress=not as_json)
        summary = summarize(results)
        annotated = None
        if experts:
            api = ExpertAPI(url)
            try:
                api.login(expert_name, expert_password)
                annotated = SimulatedExpert(company, api, csat_max).work(limit=n)
            except ChatAPIError as exc:
                raise click.ClickException(f"the simulated expert failed at {url}: {exc}") from None
            finally:
                api.close()
    if as_json:
        click.echo(_clean_json({**summary.to_dict(), "turns_annotated": annotated}))
        return
    click.echo(summary.format())
    if annotated is not None:
        click.echo(f"simulated expert: {annotated} bot turns annotated")
