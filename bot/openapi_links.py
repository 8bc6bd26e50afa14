"""The ``links`` of /openapi.json: which values of an answer (an id, the customer token, a version, a turn
index) a client passes to its next calls, the way the widget and the consoles chain them.

A tool that follows links, such as schemathesis' stateful tests, chains its calls the same way. Each link
names its target by ``operationRef`` and takes only what the source really returns (``$response.body``) or
was called with (``$request``: a retry of a message sends its Idempotency-Key and text again). Only the
start of a conversation returns its token; the calls after that send the token the client keeps (see the
``customerToken`` scheme).
"""

from __future__ import annotations

from typing import Any, NamedTuple

CONV = "/api/conversations/{conv_id}"
ARTICLE = "/api/kb/articles/{article_id}"
INBOX_CONV = "/api/inbox/conversations/{conv_id}"
USER = "/api/admin/users/{name}"
SCHEDULE = "/api/operator/schedules/{schedule_id}"
PROGRESS = "/api/operator/runs/{run_id}/progress"


class Link(NamedTuple):
    """One way on from an answer: the target operation, its parameters and body fields (runtime expressions)."""

    name: str
    method: str
    path: str
    parameters: dict[str, str]
    body: dict[str, Any] | None = None


CONVERSATION_CALLS = {"GetTranscript": ("get", CONV), "SendMessage": ("post", f"{CONV}/messages"),
                      "EndConversation": ("post", f"{CONV}/end"), "RateConversation": ("post", f"{CONV}/rating"),
                      "AskForPerson": ("post", f"{CONV}/handoff"), "FollowConversation": ("get", f"{CONV}/events"),
                      "LeaveContact": ("post", f"{CONV}/contact"), "EraseConversation": ("delete", CONV)}
HANDOFF_CALLS = {"ViewHandedOff": ("get", INBOX_CONV), "FollowHandedOff": ("get", f"{INBOX_CONV}/events"),
                 "ClaimConversation": ("post", f"{INBOX_CONV}/claim"),
                 "ReplyToCustomer": ("post", f"{INBOX_CONV}/messages"),
                 "TransferToBot": ("post", f"{INBOX_CONV}/transfer"),
                 "ResolveConversation": ("post", f"{INBOX_CONV}/resolve")}


def _calls(table: dict[str, tuple[str, str]], given: dict[str, str], *only: str) -> list[Link]:
    """Links to the operations of ``table`` (those named in ``only``, or all), each with the ``given`` parameters."""
    return [Link(name, method, path, given) for name, (method, path) in table.items() if not only or name in only]


def _conversation_calls(conv_id: str, *only: str, token: str = "") -> list[Link]:
    """The customer's calls on a conversation; with ``token``, the link carries it in the Authorization header."""
    return _calls(CONVERSATION_CALLS, {"path.conv_id": conv_id, **({"header.Authorization": token} if token else {})},
                  *only)


def _handoff_calls(conv_id: str, *only: str) -> list[Link]:
    """An agent's calls on a handed-off conversation in the inbox."""
    return _calls(HANDOFF_CALLS, {"path.conv_id": conv_id}, *only)


def _article_calls(article: str = "$response.body#") -> list[Link]:
    """The knowledge console's calls on the article an answer shows (edits start from its version)."""
    given, version = {"path.article_id": f"{article}/id"}, f"{article}/version"
    return [Link("GetArticle", "get", ARTICLE, given),
            Link("EditArticle", "put", ARTICLE, given, {"base_version": version}),
            Link("RetireArticle", "post", f"{ARTICLE}/retire", given, {"base_version": version}),
            Link("RevertArticle", "post", f"{ARTICLE}/revert", given, {"to_version": 1, "base_version": version}),
            Link("ListVersions", "get", f"{ARTICLE}/versions", given),
            Link("GetVersion", "get", f"{ARTICLE}/versions/{{version}}", {**given, "path.version": version}),
            Link("GetPublished", "get", "/api/help/articles/{article_id}", given)]


USER_CALLS = _calls({"ChangeRole": ("put", f"{USER}/role"), "DisableAccount": ("put", f"{USER}/disabled"),
                     "SetPassword": ("put", f"{USER}/password"), "SignOutEverywhere": ("post", f"{USER}/sign-out"),
                     "RemoveAccount": ("delete", USER)}, {"path.name": "$response.body#/name"})


def _schedule_calls(schedule_id: str) -> list[Link]:
    """An operator's calls on a retraining schedule."""
    return _calls({"EnableSchedule": ("patch", SCHEDULE), "DeleteSchedule": ("delete", SCHEDULE)},
                  {"path.schedule_id": schedule_id})


def _review_calls(conv_id: str, index: str | None = None) -> list[Link]:
    """An expert's calls on a conversation: read it, and annotate the bot turn ``index`` where one is known."""
    review = [Link("ReviewConversation", "get", "/api/expert/conversations/{conv_id}", {"path.conv_id": conv_id})]
    if index is None:
        return review
    return review + [Link("AnnotateTurn", "post", "/api/expert/conversations/{conv_id}/turns/{index}/annotations",
                          {"path.conv_id": conv_id, "path.index": index})]


def _progress(run_id: str, name: str = "RunProgress", after: str = "") -> Link:
    """The progress of the run ``run_id`` (from the stream id ``after``, where given)."""
    return Link(name, "get", PROGRESS, {"path.run_id": run_id, **({"query.after": after} if after else {})})


ANSWERED = "$request.path.conv_id"
ARTICLE_ANSWERS = (("post", "/api/kb/articles", "201"), ("put", ARTICLE, "200"), ("post", f"{ARTICLE}/retire", "200"),
                   ("post", f"{ARTICLE}/revert", "200"))
"""The answers that show one article (its id and version)."""

LINKS: dict[tuple[str, str, str], list[Link]] = {
    ("post", "/api/conversations", "201"): _conversation_calls(
        "$response.body#/conversation_id", token="Bearer {$response.body#/token}"),
    ("post", f"{CONV}/messages", "200"): [
        *_conversation_calls(ANSWERED),
        Link("RetryMessage", "post", f"{CONV}/messages",
             {"path.conv_id": ANSWERED, "header.Idempotency-Key": "$request.header.Idempotency-Key"},
             {"text": "$request.body#/text"}),
        *_review_calls(ANSWERED, "$response.body#/turn_index"),
        *_handoff_calls(ANSWERED, "ViewHandedOff", "ClaimConversation")],
    ("post", f"{CONV}/messages", "202"): _handoff_calls("$response.body#/conversation_id"),
    ("post", f"{CONV}/rating", "200"): _conversation_calls(ANSWERED, "RateConversation", "GetTranscript"),
    ("post", f"{CONV}/end", "200"): _conversation_calls(
        "$response.body#/conversation_id", "RateConversation", "GetTranscript", "EraseConversation"),
    ("post", f"{CONV}/handoff", "200"): [
        *_handoff_calls("$response.body#/conversation_id"),
        *_conversation_calls("$response.body#/conversation_id", "SendMessage", "FollowConversation", "LeaveContact")],
    ("get", "/api/inbox/conversations", "200"): _handoff_calls("$response.body#/waiting/0/conversation_id"),
    ("post", f"{INBOX_CONV}/claim", "200"): _handoff_calls("$response.body#/conversation_id"),
    ("post", f"{INBOX_CONV}/messages", "201"): _handoff_calls(ANSWERED),
    ("post", f"{INBOX_CONV}/transfer", "200"): _review_calls("$response.body#/conversation_id"),
    ("get", "/api/expert/queue", "200"): _review_calls("$response.body#/conversations/0/id"),
    **{source: _article_calls() for source in ARTICLE_ANSWERS},
    ("get", "/api/kb/articles", "200"): _article_calls("$response.body#/articles/0"),
    ("get", "/api/help/articles", "200"): [Link("GetPublished", "get", "/api/help/articles/{article_id}",
                                                {"path.article_id": "$response.body#/articles/0/id"})],
    ("post", "/api/admin/users", "201"): USER_CALLS,
    ("get", "/api/operator/schedules", "200"): _schedule_calls("$response.body#/schedules/0/id"),
    ("post", "/api/operator/schedules", "201"): _schedule_calls("$response.body#/id"),
    ("patch", SCHEDULE, "200"): _schedule_calls("$response.body#/id"),
    ("post", "/api/operator/train", "202"): [_progress("$response.body#/id")],
    ("get", "/api/operator/runs", "200"): [_progress("$response.body#/runs/0/id")],
    ("get", PROGRESS, "200"): [_progress("$response.body#/run/id", "NextProgress", after="$response.body#/last")],
    ("get", "/api/operator/adapters", "200"): [
        Link(name, "post", f"/api/operator/adapters/{{version}}/{action}",
             {"path.version": "$response.body#/adapters/0/version"})
        for name, action in (("PromoteAdapter", "promote"), ("CanaryAdapter", "canary"))],
}
"""Per answer (method, path, status): the links to put on it."""


def operation_ref(method: str, path: str) -> str:
    """A JSON-pointer reference to the operation ``method path`` of this document."""
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method


def add_links(paths: dict[str, dict[str, Any]]) -> None:
    """Put ``LINKS`` on the responses of ``paths``; a link from or to an undocumented operation is a KeyError."""
    for (method, path, status), links in LINKS.items():
        responses = paths[path][method]["responses"]
        described: dict[str, Any] = {}
        for link in links:
            if link.method not in paths.get(link.path, {}):
                raise KeyError(f"link {link.name} from {method.upper()} {path} names no documented operation")
            described[link.name] = {"operationRef": operation_ref(link.method, link.path),
                                    "parameters": link.parameters, **({"requestBody": link.body} if link.body else {})}
        responses[status] = {**responses[status], "links": described}
