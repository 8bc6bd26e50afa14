"""``loopdesk kb …``: import, export and list the knowledge base's articles."""

from __future__ import annotations

import time
from pathlib import Path

import click


def _store():
    from loopdesk.cli_support import settings_or_exit
    from feedback_store.store import FeedbackStore

    return FeedbackStore.from_settings(settings_or_exit(), announce=False)


@click.group("kb")
def kb_group() -> None:
    """The knowledge base the bot answers from: help-centre articles, every version kept."""


@kb_group.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--by", "by", default="import", show_default=True, help="Name recorded as the author of new versions.")
@click.option("--if-empty", is_flag=True, help="Do nothing when the knowledge base already has articles.")
def import_command(path: Path, by: str, if_empty: bool) -> None:
    """Import a folder of Markdown files, one .md file or a .jsonl file: all articles or none.

    New ids are created, changed articles get a new version, unchanged ones stay as they are.
    """
    from feedback_store.errors import FeedbackStoreError
    from loopdesk.knowledge_files import KnowledgeFileError, read_articles

    store = _store()
    if if_empty and store.knowledge.revision():
        click.echo(f"the knowledge base already has articles (revision {store.knowledge.revision()}): "
                   "nothing imported")
        return
    try:
        drafts = read_articles(path)
        result = store.knowledge.import_articles(drafts, by=by)
    except (KnowledgeFileError, FeedbackStoreError) as exc:
        raise click.ClickException(f"nothing was imported. {exc}") from None
    click.echo(f"imported {len(drafts)} articles from {path}: {len(result.created)} new, "
               f"{len(result.updated)} changed, {len(result.unchanged)} unchanged (revision {result.revision})")


@kb_group.command("export")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["md", "jsonl"]), default=None,
              help="md: a folder with one <id>.md per article; jsonl: one file. Default: jsonl when PATH "
                   "ends in .jsonl, else md.")
def export_command(path: Path, fmt: str | None) -> None:
    """Write every article's current version (published and retired) to a new folder or file."""
    from feedback_store.errors import FeedbackStoreError
    from loopdesk.knowledge_files import export_articles

    fmt = fmt or ("jsonl" if path.suffix == ".jsonl" else "md")
    try:
        snapshot = _store().knowledge.snapshot()
        export_articles(snapshot.articles, path, fmt)
    except (FileExistsError, FeedbackStoreError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"exported {len(snapshot.articles)} articles to {path} ({fmt}, revision {snapshot.revision})")


@kb_group.command("list")
@click.option("--status", type=click.Choice(["published", "retired", "all"]), default="all", show_default=True)
@click.option("--search", "text", default="", help="Only articles with this text in their id, title or tags.")
def list_command(status: str, text: str) -> None:
    """List the articles: id, version, status, last change and title."""
    store = _store()
    articles = store.knowledge.list(status=None if status == "all" else status, text=text)
    if not articles:
        click.echo("no articles")
        return
    width = max(len(a.id) for a in articles)
    for a in articles:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(a.updated_at))
        click.echo(f"{a.id:<{width}}  v{a.version:<3} {a.status:<9}  {when} by {a.updated_by}  {a.title}")
    click.echo(f"{len(articles)} articles, knowledge-base revision {store.knowledge.revision()}")
