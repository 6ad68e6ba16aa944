"""Static checks of the committed notebooks and of the glossary they link; nbval runs the notebooks (see README)."""
import ast
import re
from pathlib import Path

import nbformat
import pytest

import tutorial_lib
from tutorial_lib.course.student import _EXERCISES_HEADING, exercise_problem, is_solution

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks_in_order():
    names = [p.name for p in NOTEBOOKS]
    assert "00_welcome_and_setup.ipynb" in names and "03_memorization_and_exposure.ipynb" in names
    assert all(re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", n) for n in names)
    numbers = [int(n[:2]) for n in names]
    assert numbers == sorted(set(numbers))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_valid_and_stripped(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} carries outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_skeleton(path):
    nb = nbformat.read(path, as_version=4)
    intro = nb.cells[0].source
    assert intro.startswith("# ") and "Learning goals" in intro
    assert re.search(r"[Rr]untime.*measured", intro), "the intro states the measured runtime"
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert "setup_notebook(" in code[0] or "setup_notebook(" in code[1]
    assert "!pip" not in "\n".join(code)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_library_name_exists(path):
    nb = nbformat.read(path, as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tutorial_lib"):
            module = __import__(node.module, fromlist=["x"])
            for alias in node.names:
                assert hasattr(module, alias.name), f"{path.name}: {node.module}.{alias.name} does not exist"
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "tl":
            assert hasattr(tutorial_lib, node.attr), f"{path.name}: tl.{node.attr} does not exist"


# ----------------------------------------------------------------------------------- glossary
ROOT = Path(__file__).resolve().parents[2]
GLOSSARY = ROOT / "docs" / "glossary.md"

#: a markdown link whose target is the glossary, e.g. ``[glossary](../docs/glossary.md)``
GLOSSARY_LINK = re.compile(r"\[[^\]]+\]\(\s*<?([^)\s>]*docs/glossary\.md)(?:#[^)\s>]*)?>?\s*\)")

#: glossary heading -> the pattern that finds the term (or symbol) in a notebook's markdown, LaTeX included
TERMS = {
    "θ* and θ′ (weights before and after unlearning)": r"θ|\\theta(?![a-zA-Z])",
    "d (number of parameters)": r"d\s*\\times\s*d\b|\\sqrt\s*d\b|\bd \\approx",
    "ℓ and L (losses)": r"ℓ|\\ell(?![a-zA-Z])|\bL_[fr]\b|\bL_D\b",
    "H (Hessian)": r"(?i)\bhessians?\b",
    "λ (damping)": r"λ|\\lambda(?![a-zA-Z])|(?i:\bdamp(?:ing|ed)\b)",
    "Δ (forget gradient)": r"Δ|\\Delta(?![a-zA-Z])",
    "n and k (training and forgotten examples)": r"\bn\s*[−-]\s*k\b|\\frac\{\\eta\}\{n\s*-\s*k\}",
    "m (number of Fisher samples)": r"\\frac1m|\\frac\{1\}\{m\}|\bm\s*\\times|\bm \\ll|\bn_fisher\b",
    "g_i and G (per-example gradients)": r"\bg_i\b|G\^\\top|Gᵀ",
    "F̂ and F̂_λ (damped empirical Fisher)": r"F̂|F\u0302|\\hat\s*\{?\s*F(?![a-zA-Z])|(?i:\bempirical Fisher\b)",
    "T (tokens per sequence)": r"\$T\$ tokens|over \$T\$|\bT\s*\\cdot|\bT_[fw]\b|/T\b|\$T \+ 1",
    "η (step scale)": r"η|\\eta(?![a-zA-Z])",
    "μ (noise parameter)": r"μ|\\mu(?![a-zA-Z])",
    "σ (noise scale)": r"σ|\\sigma(?![a-zA-Z])",
    "p (noise exponent)": r"\^\{?p\b|(?i:\bexponent\b)",
    "ε (two meanings)": r"ε|\\varepsilon|\\epsilon",
    "β (NPO's temperature)": r"β|\\beta(?![a-zA-Z])",
    "C (clipping bound)": r"(?i)\bclipping bound\b|\bper-example clipping\b|\bclip each\b|\bclipped (?:examples?|gradients?)\b",
    "q (sampling rate)": r"(?i)\bsampl(?:ing|e) rate\b|\bprobability q\b|\bpoisson sampl",
    "(ε, δ)-certified removal": r"(?i)\bcertif(?:ied|y|icate|ies)\b",
    "(ε, δ)-differential privacy": r"\(ε, δ\)|\(\\varepsilon,\s*\\delta\)|(?i:\bdifferential(?:ly)? priva(?:cy|te)\b)",
    "Bands": r"\bBANDS\b|(?i:\bbands?\b)",
    "C1 (Fisher Removal reaches the retrained model)": r"\bC1\b",
    "C2 (more reliably than gradient ascent)": r"\bC2\b",
    "C3 (Fisher Forgetting over sequential requests)": r"\bC3\b",
    "C4 (DP-SGD is no substitute)": r"\bC4\b",
    "C5 (a small fraction of retraining)": r"\bC5\b",
    "Cache": r"(?i)\bcache[ds]?\b",
    "Canary": r"(?i)\bcanar(?:y|ies)\b",
    "Conjugate gradients": r"(?i)\bconjugate gradients?\b",
    "Control canary": r"(?i)\bcontrols?\b",
    "Deletion request": r"(?i)\bdeletion requests?\b",
    "DP-SGD": r"\bDP-SGD\b|\bDP\b",
    "Exposure": r"(?i)\bexposures?\b",
    "Extraction": r"(?i)\bextract(?:ion|ed|s)?\b",
    "Fine-tuning (retain-only baseline)": r"(?i)\bfine[- ]tun(?:e|ed|es|ing)\b|\bfine_tune\b",
    "Pretrained model and the re-fine-tuned oracle": r"(?i)\bpre-?trained\b|\bre-fine-tun",
    "Quantisation (Q4_1) and dequantisation": r"(?i)\bquantis|\bQ4_1\b",
    "Fisher Forgetting": r"(?i)\bfisher forgetting\b|\bfisher_forgetting\b",
    "Fisher Removal": r"(?i)\bfisher removal\b|\bfisher_removal\b",
    "Fisher structure": r"(?i)\bstructures?\b",
    "Forget loss": r"(?i)\bforget loss\b|secret-given-prefix",
    "Forget quality": r"(?i)\bforget quality\b",
    "Forget set and retain set": r"(?i)\b(?:forget|retain) set\b|\bD_[fr]\b",
    "GGN (generalised Gauss–Newton)": r"\bGGN\b|(?i:\bgauss[–-]newton\b)",
    "Gradient ascent": r"(?i)\bgradient ascent\b|\bgradient_ascent\b",
    "Gradient difference": r"(?i)\bgradient difference\b|\bgradient_difference\b|\bgrad diff\b",
    "Group privacy": r"(?i)\bgroup (?:privacy|bound)\b",
    "Influence function": r"(?i)\binfluence functions?\b",
    "K-FAC": r"\bK-FAC\b|\bkfac\b|(?i:\bkronecker)",
    "KL to the retrained model": r"\bKL\b",
    "LiSSA": r"\bLiSSA\b|\bihvp_lissa\b",
    "Log-perplexity": r"(?i)\blog-perplexit(?:y|ies)\b",
    "Machine unlearning": r"(?i)\bunlearn(?:ing|ed|s)?\b",
    "Membership inference": r"(?i)\bmembership[- ]inference\b|\bmembership attacks?\b",
    "Memorisation": r"(?i)\bmemori[sz](?:ation|e|ed|es|ing)\b",
    "Model scale": r"(?i)\bmodel scale\b|-scale models?\b",
    "Newton step": r"(?i)\bnewton(?:'s)? (?:step|removal|method|update)s?\b",
    "NPO": r"\bNPO\b|\bnpo\b",
    "Oracle-free rule": r"(?i)\boracle-free\b|\bchoose_setting\b",
    "Per-sample gradients": r"(?i)\bper-(?:sample|example) gradients?\b|\bper_sample_gradients\b",
    "Perplexity": r"(?i)\bperplexit(?:y|ies)\b",
    "PrivLeak": r"\bPrivLeak\b",
    "Profile (tiny, small, full)": r"(?i)\bprofiles?\b",
    "Randomness space (R)": r"(?i)\brandomness spaces?\b|\|R\||\\mathcal\{?R\b",
    "RDP (Rényi differential privacy) and the RDP accountant": r"\bRDP\b|(?i:\baccountant\b|\brényi\b)",
    "Relearning attack": r"(?i)\brelearning\b",
    "Reproduced, not reproduced, inconclusive": r"(?i)\b(?:not )?reproduced\b|\binconclusive\b",
    "Retrained model (oracle)": r"(?i)\bretrained\b|\boracle\b",
    "Secret": r"(?i)\bsecrets?\b",
    "Secret AUC": r"(?i)\bsecret AUC\b",
    "Sequential requests": r"(?i)\bsequential (?:requests?|study)\b|\brepeated (?:unlearning )?requests\b",
    "Skew-normal estimate": r"(?i)\bskew-normal\b",
    "Trie": r"(?i)\btries?\b",
    "True Fisher": r"(?i)\btrue Fisher\b",
    "Two-sided verdict": r"(?i)\btwo-sided\b|\b(?:under|over)-forg(?:otten|etting)\b|\bdamaged\b|\bverdicts?\b",
    "Woodbury / Sherman–Morrison": r"(?i)\bwoodbury\b|\bsherman[–-]morrison\b|\bwoodfisher\b",
}

_ENTRY_END = re.compile(r"First used: notebook (\d\d)\.\s*\Z")


def glossary_entries(text: str) -> dict[str, str]:
    """The glossary's entries, ``## heading`` -> the text under it."""
    parts = re.split(r"^## (.+?)[ \t]*$", text, flags=re.MULTILINE)
    return {heading: body.strip() for heading, body in zip(parts[1::2], parts[2::2])}


def markdown_text(nb) -> str:
    """Every markdown cell of a notebook, solutions included, as one text."""
    return "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def _snippet(text: str, match, width: int = 40) -> str:
    return " ".join(text[max(0, match.start() - width):match.end() + width].split())


def test_glossary_links_and_terms():
    text = GLOSSARY.read_text(encoding="utf-8")
    entries = glossary_entries(text)
    headings = re.findall(r"^## (.+?)[ \t]*$", text, flags=re.MULTILINE)
    problems = [f"docs/glossary.md has the heading {h!r} more than once" for h in sorted({h for h in headings if headings.count(h) > 1})]
    problems += [f"TERMS names {h!r}, which is no heading of docs/glossary.md" for h in TERMS if h not in entries]
    problems += [f"docs/glossary.md has {h!r}, for which TERMS has no pattern" for h in entries if h not in TERMS]
    numbers = {p.name[:2] for p in NOTEBOOKS}
    for heading, body in entries.items():
        end = _ENTRY_END.search(body)
        if not end or end.group(1) not in numbers:
            problems.append(f"glossary entry {heading!r} does not end with 'First used: notebook NN.' naming a notebook")
    texts = {}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        link = GLOSSARY_LINK.search(nb.cells[0].source) if nb.cells and nb.cells[0].cell_type == "markdown" else None
        if not link:
            problems.append(f"{path.name}: the first cell does not link the glossary ([glossary](../docs/glossary.md))")
        elif (path.parent / link.group(1)).resolve() != GLOSSARY.resolve():
            problems.append(f"{path.name}: the glossary link {link.group(1)!r} does not lead to docs/glossary.md")
        texts[path.name] = text = markdown_text(nb)
        for heading, pattern in TERMS.items():
            match = re.search(pattern, text)
            if match and heading not in entries:
                problems.append(f"{path.name} uses {match.group(0)!r} ('{_snippet(text, match)}'), "
                                f"but the glossary has no entry {heading!r}")
    unused = [h for h, pattern in TERMS.items() if not any(re.search(pattern, t) for t in texts.values())]
    problems += [f"no notebook uses the glossary's {h!r} (or its pattern in TERMS is wrong)" for h in unused]
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------------- structure
_SOLUTION_START = re.compile(r"\s*\*\*Solution (\d+)\.\*\*")
_HEADING = re.compile(r"^ {0,3}#{1,6}\s", re.MULTILINE)
_FIGURE_REPR = re.compile(r"<Axes|<Figure")

#: what a markdown cell must not say: the course speaks of itself, not of how it is developed
FORBIDDEN_PROSE = {
    "refers to issues": r"(?i)\bissues?\b",
    "refers to tests": r"(?i)\btests\b|\btest suite\b|\bunit tests?\b",
    # the library's own default cache folder is the one path outside the repository a student needs
    "names a path outside the repository": r"\.\./shared\b|(?:\.\./){2,}|(?<![\w.~])/(?:work|tmp|home|Users)/|~/(?!\.cache/tutorial_lib\b)",
    "says 'our reconstruction'": r"(?i)\bour reconstruction\b",
}


def has_assert(source: str) -> bool:
    """Whether code holds an ``assert`` statement (IPython magics and shell lines skipped)."""
    code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
    try:
        return any(isinstance(node, ast.Assert) for node in ast.walk(ast.parse(code)))
    except SyntaxError:
        return re.search(r"^\s*assert\b", code, re.MULTILINE) is not None


def figure_reprs(nb) -> list[str]:
    """Code outputs that print a figure's repr (``<Axes ...>``, ``<Figure ...>``) instead of, or beside,
    the figure: a cell that should end with ``;`` or assign its result. Usable on executed notebooks."""
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            texts = [out.get("text", "")] if out.get("output_type") == "stream" else [
                v if isinstance(v, str) else "".join(v) for k, v in (out.get("data") or {}).items() if k.startswith("text/")]
            found += [f"cell {i}: {t[m.start():m.start() + 60]!r}" for t in texts for m in _FIGURE_REPR.finditer(t)]
    return found


def intro_problems(nb) -> list[str]:
    intro = nb.cells[0].source if nb.cells and nb.cells[0].cell_type == "markdown" else ""
    return [f"the first cell has no {word!r}" for word in ("Learning goals", "Prerequisites", "Runtime") if word not in intro]


def exercise_problems(nb, name: str) -> list[str]:
    """Exactly one ``## Exercises`` heading; for every numbered item ``k.`` of its section a markdown
    cell starting ``**Solution k.**`` tagged ``solution``, followed by tagged code cells with an
    ``assert``; a ``## Summary`` heading after the exercises."""
    cells = nb.cells
    headings = [(i, m) for i, c in enumerate(cells) if c.cell_type == "markdown" and not is_solution(c)
                for m in _EXERCISES_HEADING.finditer(c.source)]
    problems = [] if (msg := exercise_problem(nb, name)) is None else [msg]
    if len(headings) != 1:
        problems.append(f"{len(headings)} Exercises headings (cells {[i for i, _ in headings]}), not exactly one")
    if not headings:
        return problems
    at, match = headings[0]
    if not match.group(0).lstrip().startswith("## "):
        problems.append(f"cell {at}: the Exercises heading is {match.group(0).strip()!r}, not '## Exercises'")
    section = cells[at].source[match.end():]
    nxt = _HEADING.search(section)
    items = [int(k) for k in re.findall(r"^(\d+)\. ", section[:nxt.start()] if nxt else section, re.MULTILINE)]
    if items != list(range(1, len(items) + 1)):
        problems.append(f"cell {at}: the exercises are numbered {items}, not 1..{len(items)}")
    solutions = {}
    for i, cell in enumerate(cells):
        start = _SOLUTION_START.match(cell.source) if cell.cell_type == "markdown" else None
        if start and not is_solution(cell):
            problems.append(f"cell {i}: '**Solution {start.group(1)}.**' is not tagged 'solution'")
        elif start:
            solutions.setdefault(int(start.group(1)), i)
    for k in range(1, len(items) + 1):
        if k not in solutions:
            problems.append(f"exercise {k} has no markdown cell starting '**Solution {k}.**' tagged 'solution'")
            continue
        if solutions[k] < at:
            problems.append(f"cell {solutions[k]}: Solution {k} comes before the Exercises heading")
        code, j = [], solutions[k] + 1
        while j < len(cells) and cells[j].cell_type == "code" and is_solution(cells[j]):
            code.append(cells[j].source)
            j += 1
        if not code:
            problems.append(f"cell {solutions[k]}: Solution {k} is not followed by a code cell tagged 'solution'")
        elif not any(has_assert(s) for s in code):
            problems.append(f"cell {solutions[k]}: Solution {k}'s code asserts nothing (it should check what the solution claims)")
    problems += [f"cell {solutions[k]}: Solution {k} answers no exercise (there are {len(items)})" for k in solutions if k > len(items)]
    summary = [(i, m.start()) for i, c in enumerate(cells) if c.cell_type == "markdown" and not is_solution(c)
               for m in re.finditer(r"^ {0,3}## Summary\b", c.source, re.MULTILINE)]
    if not any(position > (at, match.start()) for position in summary):
        problems.append("no '## Summary' heading after the exercises")
    return problems


def prose_problems(nb) -> list[str]:
    """Markdown that talks about issues, tests, paths outside the repository or 'our reconstruction'."""
    return [f"cell {i}: {what}: '{_snippet(cell.source, m)}'"
            for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown"
            for what, pattern in FORBIDDEN_PROSE.items() for m in re.finditer(pattern, cell.source)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_structure(path):
    nb = nbformat.read(path, as_version=4)
    problems = (intro_problems(nb) + exercise_problems(nb, path.name)
                + [f"figure repr in the output of {f}" for f in figure_reprs(nb)] + prose_problems(nb))
    assert not problems, f"{path.name}:\n" + "\n".join(problems)
