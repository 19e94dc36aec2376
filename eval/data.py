"""Benchmark data: local files laid out as `../shared/data` (see its SOURCES.md), or the Hub datasets.

Every loader returns plain dicts in one schema per kind of task:
- hellaswag: the original fields (activity_label, ctx_a, ctx_b, ctx, endings, label)
- multiple choice (piqa, arc_*): {"query", "choices", "gold"}, query in lm-eval's "Question: ...\\nAnswer:" form
- lambada: {"context", "continuation"}, the continuation being the last word without its space
- winogrande: {"context_options", "continuation", "gold"} (partial scoring)
- wikitext: {"page"}, one Wikipedia article as in EleutherAI/wikitext_document_level
"""

import re
from pathlib import Path

from cli_guard import jsonl_lines

LOCAL_FILES = {
    "hellaswag": "hellaswag/hellaswag_val.jsonl",
    "lambada_openai": "evals/lambada_openai.jsonl",
    "piqa": "evals/piqa.jsonl",
    "arc_easy": "evals/arc_easy.jsonl",
    "arc_challenge": "evals/arc_challenge.jsonl",
    "winogrande": "evals/winogrande.jsonl",
    "wikitext": "evals/wikitext2_test.raw",
}

# (path, config, split) of the Hub dataset lm-eval evaluates each task on
HUB_DATASETS = {
    "hellaswag": ("Rowan/hellaswag", None, "validation"),
    "lambada_openai": ("EleutherAI/lambada_openai", "default", "test"),
    "piqa": ("baber/piqa", None, "validation"),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test"),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test"),
    "winogrande": ("allenai/winogrande", "winogrande_xl", "validation"),
    "wikitext": ("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", "test"),
}


# the fields of each local file's lines with their types, the list of choices, and the field holding the gold index
SCHEMAS = {
    "hellaswag": ({"activity_label": str, "ctx_a": str, "ctx_b": str, "ctx": str, "endings": list, "label": (int, str)},
                  "endings", "label"),
    "lambada_openai": ({"context": str, "continuation": str}, None, None),
    "piqa": ({"query": str, "choices": list, "gold": (int, str)}, "choices", "gold"),
    "arc_easy": ({"query": str, "choices": list, "gold": (int, str)}, "choices", "gold"),
    "arc_challenge": ({"query": str, "choices": list, "gold": (int, str)}, "choices", "gold"),
    "winogrande": ({"context_options": list, "continuation": str, "gold": (int, str)}, "context_options", "gold"),
}
_TYPE_NAMES = {str: "a string", (int, str): "an index"}
_JSON_NAMES = {str: "a string", list: "a list", dict: "an object", int: "a number", float: "a number", bool: "true/false",
               type(None): "null"}


def _check_doc(task: str, doc, where: str) -> dict:
    """A document of the task's schema, else a ValueError naming the file, the line and what is wrong."""
    fields, choices, gold = SCHEMAS[task]
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected a JSON object with {', '.join(fields)}, got a {type(doc).__name__}")
    missing = [k for k in fields if k not in doc]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)} (a {task} line has {', '.join(fields)})")
    for key, kind in fields.items():
        if key != choices and (not isinstance(doc[key], kind) or isinstance(doc[key], bool)):
            raise ValueError(f"{where}: {key} is {_JSON_NAMES.get(type(doc[key]), type(doc[key]).__name__)}, expected "
                             f"{_TYPE_NAMES[kind]} (a {task} line has {', '.join(fields)})")
    if choices is not None:
        options = doc[choices]
        if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
            raise ValueError(f"{where}: {choices} must be a list of at least two strings")
        try:
            index = int(doc[gold])
        except (TypeError, ValueError):
            index = None
        if index is None or not 0 <= index < len(options):
            raise ValueError(f"{where}: {gold}={doc[gold]!r} is not an index into the {len(options)} {choices} "
                             f"(0..{len(options) - 1}); such an item cannot be scored")
    return doc


def _read_jsonl(path: Path, task: str) -> list[dict]:
    docs = [_check_doc(task, doc, f"{path} line {number}") for number, doc in jsonl_lines(path)]
    if not docs:
        raise ValueError(f"{path} holds no {task} items")
    return docs


def _is_heading(line: str) -> bool:
    """A top-level WikiText heading (` = Title = `) starts a new article, as in wikitext_document_level."""
    line = line.replace("= = =", "===").replace("= =", "==").strip()
    return line.startswith("= ") and line.endswith(" =")


def split_articles(lines: list[str]) -> list[str]:
    """WikiText lines -> one string per article, lines joined with newlines."""
    pages, current = [], []
    for line in lines:
        if _is_heading(line):
            if "".join(current).strip():
                pages.append("\n".join(current))
            current = []
        current.append(line)
    if "".join(current).strip():
        pages.append("\n".join(current))
    return pages


def _mc_context(query: str) -> str:
    # the local files hold "Question: ...\n" (PIQA) or "Question: ..." (ARC); lm-eval's prompt adds "\nAnswer:"
    return query.rstrip("\n") + "\nAnswer:"


def _load_local(task: str, data_dir: Path) -> list[dict]:
    path = data_dir / LOCAL_FILES[task]
    if not path.is_file():
        raise FileNotFoundError(f"{task}: expected {path} (data_dir={data_dir} must be laid out like ../shared/data)")
    if task == "wikitext":
        # bytes, not text mode: the lines are joined with CRLF and text mode would translate them
        try:
            lines = path.read_bytes().decode("utf-8").removesuffix("\r\n").split("\r\n")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not UTF-8 text ({err})") from None
        return [{"page": page} for page in split_articles(lines)]
    docs = _read_jsonl(path, task)
    if task in ("piqa", "arc_easy", "arc_challenge"):
        return [{"query": _mc_context(d["query"]), "choices": d["choices"], "gold": int(d["gold"])} for d in docs]
    return docs


def _load_hub(task: str) -> list[dict]:
    from datasets import load_dataset

    from modeling_gpt.network import OfflineError, hub_unavailable

    path, name, split = HUB_DATASETS[task]
    reason = hub_unavailable()
    fix = "pass --data-dir with local copies laid out like ../shared/data (e.g. --data-dir ../shared/data)"
    if reason and reason != "HF_HUB_OFFLINE=1 is set":
        raise OfflineError(f"{task} reads {path} from the Hub, but {reason}: {fix}, or set HF_HUB_OFFLINE=1 to use the datasets cache")
    try:
        rows = load_dataset(path, name, split=split)
    except ConnectionError as err:  # offline mode and not in the datasets cache
        if not reason:
            raise
        raise OfflineError(f"{task}: {path} is not in the datasets cache and {reason}: {fix}") from err
    if task == "hellaswag":
        return [dict(d, label=int(d["label"])) for d in rows]
    if task == "lambada_openai":
        return [dict(zip(("context", "continuation"), d["text"].rsplit(" ", 1))) for d in rows]
    if task == "piqa":
        return [{"query": f"Question: {d['goal']}\nAnswer:", "choices": [d["sol1"], d["sol2"]], "gold": int(d["label"])} for d in rows]
    if task in ("arc_easy", "arc_challenge"):
        return [
            {"query": f"Question: {d['question']}\nAnswer:", "choices": d["choices"]["text"],
             "gold": d["choices"]["label"].index(d["answerKey"])}
            for d in rows
        ]
    if task == "winogrande":
        docs = []
        for d in rows:
            blank = d["sentence"].index("_")
            docs.append({
                "context_options": [d["sentence"][:blank] + d["option1"], d["sentence"][:blank] + d["option2"]],
                "continuation": d["sentence"][blank + 1 :].strip(),
                "gold": int(d["answer"]) - 1,
            })
        return docs
    return [{"page": d["page"]} for d in rows]


def load_task_docs(task: str, data_dir=None, limit: int | None = None) -> list[dict]:
    """The first `limit` documents of a task, from `data_dir` when given, else from the Hub."""
    if task not in LOCAL_FILES:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(LOCAL_FILES)}")
    if data_dir is not None:
        docs = _load_local(task, Path(data_dir))
    else:
        docs = _load_hub(task)
        if task in SCHEMAS:
            docs = [_check_doc(task, d, f"{task} item {i} from the Hub") for i, d in enumerate(docs)]
    return docs if limit is None else docs[:limit]


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag cleaning: WikiHow's [title]/[step] markers out, double spaces collapsed."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def wikitext_detokenize(text: str) -> str:
    """Undo WikiText's tokenization (` @-@ `, spaced punctuation, ...) the way lm-eval's wikitext task does."""
    text = text.replace("s '", "s'")
    text = re.sub(r"/' [0-9]/", r"/'[0-9]/", text)
    for spaced, joined in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", ".")):
        text = text.replace(spaced, joined)
    for mark in ":;.!?,":
        text = text.replace(f" {mark} ", f"{mark} ")
    text = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", text)
    text = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", text)
    text = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", text)
    text = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', text)
    text = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", text)
    text = text.replace("= = = =", "====").replace("= = =", "===").replace("= =", "==")
    text = text.replace(" " + chr(176) + " ", chr(176))
    text = text.replace(" \n", "\n").replace("\n ", "\n")
    text = text.replace(" N ", " 1 ")
    return text.replace(" 's", "'s")
