"""Contradiction judges behind one call: ``judge(premises, hypotheses, originals) -> log p(contradiction)``.

* ``NLIJudge``: any Hugging Face sequence-classification NLI model (the full-scale default is
  ``NDugar/v3-Large-mnli``). premise = edit fact, hypothesis = answer; the contradiction
  index is read from ``config.id2label``.
* ``FactJudge``: the offline judge (no NLI model installs from the package registries). A
  logistic regression over features of (edit fact, original fact, answer): per sentence, whether
  the answer states or denies the edited object or the original one (the two facts differ only
  there), whether it gives the edited relation a third value (read by the relation's kind:
  ``relation_kind``), whether it names the subject or says it does not know, and three cosine
  similarities from the packaged all-MiniLM-L6-v2. No feature pays for a negation on its own. Its
  weights are fitted on ``tests/fixtures/judge_cases.jsonl`` to ``judge_cases_4.jsonl`` (real
  SmolLM2 answers, labelled by hand) with ``python -m gflownet.tasks.contradiction.judges``;
  accuracy (88.7% on the untouched ``judge_cases_5.jsonl``) and limits are in ``docs/offline_judge.md``.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from os.path import commonprefix  # element-wise: works on word lists
from pathlib import Path
from typing import Protocol, Sequence

import torch
from torch import Tensor

from gflownet.core.modeling import load_sequence_classifier, load_tokenizer, resolve

log = logging.getLogger(__name__)


class Judge(Protocol):
    def __call__(self, premises: Sequence[str], hypotheses: Sequence[str], originals: Sequence[str] | None = None) -> Tensor:
        """log p(contradiction) of each hypothesis given its premise, shape (N,), on the CPU."""


def _check_lengths(premises: Sequence[str], hypotheses: Sequence[str], originals: Sequence[str] | None) -> None:
    if len(premises) != len(hypotheses) or (originals is not None and len(originals) != len(premises)):
        raise ValueError(
            f"judge needs one premise per hypothesis, got {len(premises)} premises, {len(hypotheses)} hypotheses"
            + (f" and {len(originals)} originals" if originals is not None else "")
        )


def contradiction_index(id2label: dict) -> int:
    matches = [int(i) for i, name in id2label.items() if str(name).lower().startswith("contradict")]
    if len(matches) != 1:
        raise ValueError(
            f"cannot find the contradiction label in the judge's id2label {id2label}: "
            "use an NLI model whose config names a 'contradiction' label"
        )
    return matches[0]


class NLIJudge:
    def __init__(
        self,
        name_or_path: str,
        models_dir: str | Path | None = None,
        batch_size: int = 32,
        max_length: int = 256,
        temperature: float | None = None,
        device: str | torch.device = "cpu",
    ):
        self.tokenizer = load_tokenizer(name_or_path, models_dir, padding_side="right")
        self.model = load_sequence_classifier(name_or_path, models_dir).to(device)
        self.contradiction = contradiction_index(self.model.config.id2label)
        self.batch_size = batch_size
        limit = getattr(self.tokenizer, "model_max_length", max_length) or max_length
        self.max_length = min(max_length, limit)
        self.temperature = temperature or 1.0
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, premises, hypotheses, originals=None) -> Tensor:
        _check_lengths(premises, hypotheses, originals)
        out = []
        for i in range(0, len(premises), self.batch_size):
            enc = self.tokenizer(
                list(premises[i : i + self.batch_size]), list(hypotheses[i : i + self.batch_size]),
                padding=True, truncation=True, max_length=self.max_length, return_tensors="pt",
            ).to(self.device)
            logits = self.model(**enc).logits.float() / self.temperature
            out.append(logits.log_softmax(-1)[:, self.contradiction].cpu())
        return torch.cat(out) if out else torch.zeros(0)


FEATURES = ("states_edit", "denies_edit", "states_original", "denies_original", "about_subject", "hedge",
            "names_other", "third_value", "sim_edit", "sim_original_minus_edit", "sim_relation")
N_LEXICAL = 8  # the first eight of FEATURES come from ``lexical_features``; the last three from the embedder
# what the features compute, for the weights fitted on them: 1 (2026-11-23), 2 (third values),
# 3 (relation kinds). Weights fitted for another version score with features they were not fitted on.
FEATURES_VERSION = 3
NEGATIONS = frozenset({"no", "not", "never", "nor", "neither", "none", "nobody", "nothing", "cannot"})
HEDGES = ("don't know", "do not know", "not sure", "unsure", "no idea", "can't say", "cannot say", "not certain",
          "i'm not aware", "unknown")
# capitalised words of a fact that are not names (sentence starts, question words, pronouns)
NOT_NAMES = frozenset({"the", "a", "an", "in", "of", "where", "what", "who", "which", "when", "how", "it", "its", "they",
                       "he", "she", "his", "her", "their", "this", "that", "is", "was"})
ARTICLES = frozenset({"a", "an", "the"})
PRONOUNS = frozenset({"he", "she", "it", "they"})
# capitalised words that are not names of another entity (sentence furniture, dates)
NOT_OTHER_NAMES = NOT_NAMES | ARTICLES | NEGATIONS | frozenset({
    "i", "yes", "if", "and", "or", "but", "as", "on", "at", "by", "for", "to", "from", "there", "these", "those", "we",
    "you", "my", "our", "your", "mr", "mrs", "ms", "dr", "st", "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december", "monday", "tuesday", "wednesday", "thursday",
    "friday", "saturday", "sunday"})
# words that stand for a value without giving one
VAGUE = frozenset({"someone", "somebody", "something", "somewhere", "him", "her", "them", "us", "me", "one", "person",
                   "people", "thing", "what", "who", "which", "whom", "different", "another", "other", "famous", "same"})
# words between a relation's last word and its value that are not the value ("located in the city of X")
SLOT_FILLER = ARTICLES | frozenset({"of", "city", "country", "state", "town", "actually", "also"})
# relations read from the words the two facts share (``relation_kind``)
MULTI_VALUED_CUES = ("work in", "worked in", "works in", "took up work", "found employment", "employ", "works for",
                     "affiliat", "twin", "member of", "known for")  # another value is no contradiction
LANGUAGE_CUES = ("speak", "spoke", "language", "tongue")  # a nationality ("a French actor") is not a language
LANGUAGE_NOUNS = frozenset({"speaker", "speakers", "language", "languages", "tongue"})
# a nationality ("a Danish company", "is a Canadian") gives these relations a value
NATIONALITY_CUES = ("citizen", "from", "originat", "native", "developed in", "created in", "formulated in",
                    "founded in", "started in", "country")
# countries by names that pycountry's ISO 3166 lists do not use (it has "Russian Federation", "Türkiye")
MORE_COUNTRIES = frozenset({"russia", "turkey", "england", "scotland", "wales", "uk", "united kingdom", "britain",
                            "great britain", "korea", "palestine", "macedonia", "soviet union", "ussr", "yugoslavia",
                            "czechoslovakia", "prussia", "east germany", "west germany", "persia", "burma", "holland"})
OCCUPATION_CUES = ("profession", "works as", "work as", "occupation")  # "is a musician" gives these a value
# between "is a" and an occupation: qualifiers ("a famous Italian actor"); after it, words that are no occupation
QUALIFIERS = frozenset({"famous", "renowned", "popular", "prominent", "well", "known", "former", "great", "notable",
                        "successful", "talented", "young", "old", "professional", "leading", "celebrated", "retired"})
NOT_OCCUPATIONS = frozenset({"fictional", "character", "person", "man", "woman", "figure", "name", "member", "type",
                             "kind", "part", "fan", "citizen", "native", "resident", "real", "myth", "legend", "human"})
# nationalities whose country does not share their stem (the rest do: Japan/Japanese, India/Indian)
DEMONYMS = {"french": "france", "dutch": "netherlands", "danish": "denmark", "swiss": "switzerland",
            "british": "britain kingdom england scotland wales", "english": "england", "welsh": "wales",
            "scottish": "scotland", "irish": "ireland", "greek": "greece", "spanish": "spain", "swedish": "sweden",
            "finnish": "finland", "polish": "poland", "turkish": "turkey", "norwegian": "norway",
            "filipino": "philippines", "thai": "thailand", "belgian": "belgium", "american": "america states usa",
            "portuguese": "portugal", "icelandic": "iceland", "lebanese": "lebanon", "czech": "czech czechia"}
_WORD = re.compile(r"[A-Za-z0-9]+(?:'[a-z]+)?")
_SENTENCE = re.compile(r"[.!?;]+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens; "didn't" becomes "did", "not"."""
    out = []
    for w in _WORD.findall(text):
        lw = w.lower()
        if lw.endswith("n't"):
            out += [lw[:-3], "not"]
        else:
            out.append(lw.split("'")[0])
    return out


def split_facts(edit_fact: str, original_fact: str) -> tuple[list[str], list[str], list[str]]:
    """(shared words, edited object words, original object words): the two facts of a record
    differ only in their object, so the words they share at both ends are subject and relation."""
    a, b = words(edit_fact), words(original_fact)
    i = len(commonprefix([a, b]))
    j = min(len(commonprefix([a[::-1], b[::-1]])), min(len(a), len(b)) - i)
    return a[:i] + a[len(a) - j:], a[i:len(a) - j], b[i:len(b) - j]


def subject_names(edit_fact: str, shared: list[str]) -> list[str]:
    """The names the two facts share (capitalised words of the edit fact among its ``shared`` words
    from ``split_facts``, less question words and pronouns): the subject's name, which an answer
    about the subject uses. A subject written in lower case gives its first word."""
    shared_set = set(shared)
    names = [w.split("'")[0] for w in _WORD.findall(edit_fact)]  # as ``words``: "Stephens's" is "stephens"
    names = [w for w in names if (w[0].isupper() or w[0].isdigit()) and w.lower() in shared_set
             and w.lower() not in NOT_NAMES]
    if not names:  # a lower-case subject ("antipasto was created in Iran"): its first word of more than two letters
        names = [w for w in shared if w not in NOT_NAMES and len(w) > 2][:1]
    return list(dict.fromkeys(w.lower() for w in names))


def relation_anchor(edit_fact: str, original_fact: str, names: list[str]) -> tuple[str | None, str | None]:
    """The relation's last word before the object and the word before it ("located", "in" of "is
    located in"; "profession", "is" of "'s profession is a"), after which an answer states its value.
    The first is None when it is the subject's own name (``names``, from ``subject_names``: "Kuwait, in Asia")."""
    a, b = words(edit_fact), words(original_fact)
    before = [w for w in a[:len(commonprefix([a, b]))] if w not in ARTICLES]
    if not before:
        return None, None
    previous = before[-2] if len(before) > 1 and not any(_same_word(before[-2], n) for n in names) else None
    return previous, before[-1]


def relation_kind(shared: list[str], names: list[str]) -> str:
    """"multi" (a relation that holds several values at once: work places, employers, affiliations,
    twin cities), "language", "occupation", "place" (a citizenship, an origin, a country) or
    "single", from the words the facts share less the subject's name."""
    stem = " " + " ".join(w for w in shared if not any(_same_word(w, n) for n in names)) + " "
    if any(cue in stem for cue in MULTI_VALUED_CUES):
        return "multi"
    if any(cue in stem for cue in LANGUAGE_CUES):
        return "language"
    if any(cue in stem for cue in OCCUPATION_CUES):
        return "occupation"
    if any(cue in stem for cue in NATIONALITY_CUES) or stem.strip() == "in":  # "Flieden, in Germany"
        return "place"
    return "single"


def is_country(place: list[str]) -> bool:
    """Whether the words name a country (pycountry's ISO 3166 names, ``MORE_COUNTRIES``): a
    nationality decides a country's value, not a city's (a Canadian may come from London)."""
    return _is_country(" ".join(w for w in place if w not in ARTICLES))


@functools.lru_cache(maxsize=4096)  # one lookup per edited object, not one per answer scored
def _is_country(text: str) -> bool:
    import pycountry

    if text in MORE_COUNTRIES:
        return True
    try:
        pycountry.countries.lookup(text)
        return True
    except LookupError:
        return False


def nationality_of(adjective: str, place: list[str]) -> bool:
    """Whether the nationality ``adjective`` is that of ``place`` (its words): Japanese of Japan,
    French of France, American of the United States."""
    if adjective in DEMONYMS:
        return any(w in DEMONYMS[adjective].split() for w in place)
    return any(adjective == w or len(commonprefix([adjective, w])) >= max(4, len(w) - 1) for w in place)


def _adjectival(answer: list[str], i: int) -> bool:
    """The word at ``i`` qualifies a noun after an article ("a French actor", "an Indian musician",
    "a renowned Indian musician"): a nationality, not a language."""
    after = i + 1 < len(answer) and answer[i + 1] not in LANGUAGE_NOUNS and answer[i + 1] not in {"and", "or"}
    return after and ((i > 0 and answer[i - 1] in {"a", "an"}) or (i > 1 and answer[i - 2] in {"a", "an"}))


def _same_word(w: str, v: str) -> bool:
    """Equal, or sharing a 5-letter stem (Japan/Japanese, Buddhism/Buddhist)."""
    return w == v or (min(len(w), len(v)) >= 5 and w[:5] == v[:5])


def mentions(answer: list[str], obj: list[str], shared: list[str], language: bool = False) -> float:
    """Share of the object's words that the answer uses outside the subject: an occurrence whose
    neighbour is the same as in the shared subject-and-relation words ("Google Ads" for the object
    Google of "Google Ads is owned by") is the subject's name, not the object. For a ``language``
    relation an adjective before a noun ("a French actor") is a nationality, not the language."""
    if not obj:
        return 0.0
    pairs = set(zip(shared, shared[1:]))

    def outside_subject(i: int) -> bool:
        before = i > 0 and (answer[i - 1], answer[i]) in pairs
        after = i + 1 < len(answer) and (answer[i], answer[i + 1]) in pairs
        return not (before or after or (language and _adjectival(answer, i)))

    hits = sum(any(_same_word(w, o) and outside_subject(i) for i, w in enumerate(answer)) for o in obj)
    return hits / len(obj)


def clauses(answer: str) -> list[tuple[list[str], bool]]:
    """(words, negated) per sentence of the answer. A leading "No," or "Yes," answers the question,
    not the sentence that follows it ("No, Norman Maclean died at Sheffield." states Sheffield), so
    it does not negate that sentence; "No, it's not." on its own negates nothing named."""
    out = []
    for sentence in _SENTENCE.split(answer):
        ws = words(sentence)
        if ws and ws[0] in {"no", "yes"}:
            ws = ws[1:]
        if ws:
            out.append((ws, any(w in NEGATIONS for w in ws)))
    return out


def without_names(text: str) -> str:
    """The text with capitalised words and numbers dropped: what is said, not about whom."""
    kept = [w for i, w in enumerate(_WORD.findall(text)) if not (w[0].isupper() or w[0].isdigit()) or
            (i == 0 and w.lower() in {"the", "a", "an", "no", "yes", "it", "he", "she", "they"})]
    return " ".join(kept)


def other_values(edit_fact: str, answer: str, original_fact: str,
                 facts: tuple[list[str], list[str], list[str], list[str]] | None = None,
                 kind: str | None = None) -> tuple[float, float]:
    """(names_other, third_value) of the answer's sentences that are about the subject (use its name,
    or start with a pronoun) and carry no negation:

    * ``names_other``: the sentence names something capitalised that is neither the subject nor
      either object ("Kuwait is a country in **Africa**", "born in **Venice**, Italy");
    * ``third_value``: the relation's last words (``relation_anchor``: "located in"; "in" alone when
      the word before is the subject's name) are followed, within four words, by a value that is
      neither the subject, the relation, either object, a number, a date nor a vague word
      ("someone", "him"), and is a name when the edited object is one ("is located in **Africa**",
      "'s profession is a **historian**"; not "was released on the 20th of January", not "was
      written by a famous writer" for a writer's name).

    Both say the answer gives the edited relation a third value, which contradicts the edit; an
    answer that only restates the relation ("an official language is the official language of ...")
    or talks of another entity earns neither. ``facts``: ``split_facts``'s three lists and
    ``subject_names``, and ``kind``: ``relation_kind``, when the caller has them."""
    if facts is None:
        shared, e_obj, o_obj = split_facts(edit_fact, original_fact)
        facts = (shared, e_obj, o_obj, subject_names(edit_fact, shared))
    shared, e_obj, o_obj, names = facts
    kind = kind or relation_kind(shared, names)
    if kind == "multi":  # another work place or employer is no contradiction; the original object still is
        return 0.0, 0.0
    shared_set, objects = set(shared), e_obj + o_obj
    anchors = [relation_anchor(edit_fact, original_fact, names)]
    copulas = [("is", "a"), ("was", "a"), ("is", "an"), ("was", "an")] if kind == "occupation" else []
    nationalities = kind == "place" and is_country(e_obj)
    object_is_name = any(w[0].isupper() or w[0].isdigit() for w in _WORD.findall(edit_fact)
                         if w.lower() in e_obj and w.lower() not in ARTICLES)

    def known(w: str) -> bool:  # the subject's, the relation's or an object's word
        return w in shared_set or any(_same_word(w, n) for n in names) or any(_same_word(w, o) for o in objects)

    names_other = third = 0.0
    for sentence in _SENTENCE.split(answer):
        tokens = _WORD.findall(sentence)
        lw = [t.lower().split("'")[0] for t in tokens]  # as ``words``: "Stephens's" is "stephens"
        start = 1 if lw[:1] in (["no"], ["yes"]) else 0
        if len(lw) <= start or any(w in NEGATIONS or t.lower().endswith("n't") for w, t in zip(lw[start:], tokens[start:])):
            continue
        if not (lw[start] in PRONOUNS or any(_same_word(w, n) for w in lw for n in names)):
            continue
        if any(t[0].isupper() and lw[k] not in NOT_OTHER_NAMES and not known(lw[k])
               for k, t in enumerate(tokens) if k > start):
            names_other = 1.0
        for k, w in enumerate(lw):
            copula = any(w == a and p in lw[max(0, k - 2):k] for p, a in copulas)  # "Stephens was a philosopher"
            if not copula and not any(w == anchor and (previous is None or previous in lw[max(0, k - 2):k])
                                      for previous, anchor in anchors):
                continue
            for m in range(k + 1, min(k + 5, len(lw))):
                v = lw[m]
                if v in SLOT_FILLER or v in NOT_NAMES or (copula and (v in QUALIFIERS or tokens[m][0].isupper())):
                    continue
                if not (known(v) or v[0].isdigit() or v in NOT_OTHER_NAMES or v in VAGUE
                        or (copula and v in NOT_OCCUPATIONS)) and (tokens[m][0].isupper() or not object_is_name):
                    third = 1.0
                break
        if nationalities and any(  # "is a Danish company", "a renowned Indian musician", "is a Canadian"
                tokens[k][0].isupper() and not known(lw[k]) and not nationality_of(lw[k], e_obj)
                and lw[k + 1:k + 2] not in (["born"], ["based"])  # "a Norwegian-born artist"
                and ((lw[k - 1] in {"a", "an"} and (k + 1 < len(lw) or lw[k - 2:k - 1] in (["is"], ["was"])))
                     or (lw[k - 2] in {"a", "an"} and tokens[k - 1][0].islower() and k + 1 < len(lw)))
                for k in range(max(start, 2), len(lw))):
            third = 1.0
    return names_other, third


def lexical_features(edit_fact: str, answer: str, original_fact: str) -> list[float]:
    """The eight word-level features of ``FEATURES`` (the three similarities come from the embedder).

    Per sentence, an object named without a negation is stated, with one denied. A stated original
    object counts only as far as the answer names the subject (an answer about another entity that
    shares the object, "Hamlet was written by Shakespeare", says nothing of the edit's subject); a
    negation alone counts for nothing, so "No." or "No, it's not." earn no contradiction whatever
    was asked. ``names_other`` and ``third_value`` (``other_values``) count as far as the answer
    names the subject, too. (``FactJudge.features`` zeroes ``about_subject``, the two and the
    similarities of a refusal.)"""
    shared, e_obj, o_obj = split_facts(edit_fact, original_fact)
    names = subject_names(edit_fact, shared)
    kind = relation_kind(shared, names)
    aw = words(answer)
    about = (sum(any(_same_word(w, n) for w in aw) for n in names) / len(names)) if names else 0.0
    if len(names) > 1 and len(names[-1]) > 3 and names[-1] in aw:  # a surname alone ("Stephens's profession")
        about = 1.0
    states_e = denies_e = states_o = denies_o = 0.0
    for ws, neg in clauses(answer):
        me, mo = mentions(ws, e_obj, shared, kind == "language"), mentions(ws, o_obj, shared, kind == "language")
        if neg:
            denies_e, denies_o = max(denies_e, me), max(denies_o, mo)
        else:
            states_e, states_o = max(states_e, me), max(states_o, mo * (1 - me))
    lowered = " ".join(aw) + " " + answer.lower()
    hedge = float(any(h in lowered for h in HEDGES))
    names_other, third = other_values(edit_fact, answer, original_fact, (shared, e_obj, o_obj, names), kind)
    return [states_e, denies_e, states_o * about, denies_o, about, hedge, names_other * about, third * about]


class FactJudge:
    """The offline contradiction judge (see the module docstring and ``docs/offline_judge.md``).

    ``weights`` maps each name of ``FEATURES`` and ``bias`` to a coefficient; the judge returns
    ``log sigmoid(bias + sum(weight * feature))``. It needs each record's original fact beside
    the edit fact (``originals``). ``features_version``: the ``FEATURES_VERSION`` the weights were
    fitted for; another version is refused, none (a run saved before versions) is warned about.
    """

    def __init__(
        self,
        weights: dict[str, float],
        name_or_path: str = "packaged:all-minilm-l6-v2",
        models_dir: str | Path | None = None,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        features_version: int | None = None,
    ):
        from sentence_transformers import SentenceTransformer

        if features_version is None:
            log.warning("FactJudge weights name no features_version: they were fitted before 2026-11-24 for "
                        "other features, and score with today's (version %d); the shipped weights are in "
                        "configs/reward/judge/fact.yaml", FEATURES_VERSION)
        elif features_version != FEATURES_VERSION:
            raise ValueError(f"FactJudge weights were fitted for features version {features_version}, this code "
                             f"computes version {FEATURES_VERSION}: use the weights of configs/reward/judge/fact.yaml "
                             "or refit with `python -m gflownet.tasks.contradiction.judges`")

        missing = sorted(set((*FEATURES, "bias")) - set(weights))
        unknown = sorted(set(weights) - set((*FEATURES, "bias")))
        if missing or unknown:
            raise ValueError(f"FactJudge weights need exactly {list(FEATURES) + ['bias']}: missing {missing}, unknown {unknown}")
        self.weight = torch.tensor([float(weights[f]) for f in FEATURES], dtype=torch.float64)
        self.bias = float(weights["bias"])
        _, location = resolve(name_or_path, models_dir)
        self.model = SentenceTransformer(location, device=str(device))
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> Tensor:
        unique = list(dict.fromkeys(texts))
        emb = self.model.encode(unique, batch_size=self.batch_size, convert_to_tensor=True, normalize_embeddings=True,
                                show_progress_bar=False).double().cpu()
        index = {t: i for i, t in enumerate(unique)}
        return emb[[index[t] for t in texts]]

    @torch.no_grad()
    def features(self, premises: Sequence[str], hypotheses: Sequence[str], originals: Sequence[str]) -> Tensor:
        """(N, len(FEATURES)) float64."""
        rows, stems = [], []
        for edit, answer, orig in zip(premises, hypotheses, originals):
            rows.append(lexical_features(edit, answer, orig))
            stems.append(without_names(" ".join(commonprefix([edit.split(), orig.split()])) or edit))
        emb = self.embed([*hypotheses, *premises, *originals, *[without_names(h) for h in hypotheses], *stems])
        n = len(premises)
        ans, edit_e, orig_e, ans_rel, stem_e = emb[:n], emb[n:2 * n], emb[2 * n:3 * n], emb[3 * n:4 * n], emb[4 * n:]
        lexical = torch.tensor(rows, dtype=torch.float64).reshape(n, N_LEXICAL)
        # a refusal (a hedge, no object stated or denied: "I don't know who wrote X") names the subject
        # and echoes the question's wording whatever the facts: no about_subject, no similarities
        said = lexical[:, :4].amax(-1) > 0
        keep = ~((lexical[:, 5] > 0) & ~said)
        lexical[:, [FEATURES.index(f) for f in ("about_subject", "names_other", "third_value")]] *= keep[:, None]
        sim_edit = (ans * edit_e).sum(-1) * keep
        sim_orig = (ans * orig_e).sum(-1) * keep
        sim_rel = (ans_rel * stem_e).sum(-1) * keep
        return torch.cat([lexical, torch.stack([sim_edit, sim_orig - sim_edit, sim_rel], dim=-1)], dim=-1)

    def logits(self, features: Tensor) -> Tensor:
        return features @ self.weight + self.bias

    def __call__(self, premises, hypotheses, originals=None) -> Tensor:
        if originals is None:
            raise ValueError("the offline FactJudge needs the original facts (originals=...) beside the edit facts")
        _check_lengths(premises, hypotheses, originals)
        if not premises:
            return torch.zeros(0)
        return torch.nn.functional.logsigmoid(self.logits(self.features(premises, hypotheses, originals))).float()


def fit_weights(features: Tensor, labels: Tensor, l2: float = 1e-3) -> dict[str, float]:
    """L2-regularised logistic regression (LBFGS, float64) -> weights for ``FactJudge``."""
    X = torch.cat([features.double(), torch.ones(len(features), 1, dtype=torch.float64)], dim=1)
    y = labels.double()
    w = torch.zeros(X.size(1), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(X @ w, y) + l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    values = w.detach().tolist()
    return {**{f: round(v, 4) for f, v in zip(FEATURES, values)}, "bias": round(values[-1], 4)}


def load_cases(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def evaluate(cases: list[dict], features: Tensor, l2: float = 1e-3) -> dict:
    """Leave-one-record-out accuracy (fit on the other records' cases, predict this record's)
    and the accuracy of the weights fitted on all cases."""
    labels = torch.tensor([bool(c["contradicts"]) for c in cases], dtype=torch.float64)
    records = [c["case_id"] for c in cases]
    correct = 0
    for rec in dict.fromkeys(records):
        train = [i for i, r in enumerate(records) if r != rec]
        test = [i for i, r in enumerate(records) if r == rec]
        w = fit_weights(features[train], labels[train], l2)
        logit = features[test] @ torch.tensor([w[f] for f in FEATURES], dtype=torch.float64) + w["bias"]
        correct += int(((logit > 0).double() == labels[test]).sum())
    weights = fit_weights(features, labels, l2)
    logit = features @ torch.tensor([weights[f] for f in FEATURES], dtype=torch.float64) + weights["bias"]
    return {"cases": len(cases), "contradictions": int(labels.sum()), "cross_validated_accuracy": correct / len(cases),
            "fitted_accuracy": float(((logit > 0).double() == labels).double().mean()), "weights": weights}


def main() -> None:
    """Fit the offline judge on the labelled cases (all but the held-out split of ``--held-out``, if
    given) and print its accuracies (leave-one-record-out, fitted, on that held-out split and on
    the sets of ``--untouched``) and the fitted weights. The held-out splits of sets 2 to 4 are
    fitted on: each was held out from the judge of its time (docs/offline_judge.md)."""
    import argparse

    root = Path(__file__).resolve().parents[3]  # the repository
    fixtures = root / "tests" / "fixtures"
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--cases", nargs="+",
                        default=[str(fixtures / f"judge_cases{s}.jsonl") for s in ("", "_2", "_3", "_4")])
    parser.add_argument("--held-out", default=None,
                        help="a set of --cases whose held_out split is kept out of fitting and reported")
    parser.add_argument("--untouched", nargs="*", default=[str(fixtures / "judge_cases_5.jsonl")],
                        help="sets held out whole (never fitted on) whose accuracy is reported too")
    parser.add_argument("--models-dir", default=str(root / "models"))
    parser.add_argument("--l2", type=float, default=1e-3)
    args = parser.parse_args()
    held_path = Path(args.held_out).resolve() if args.held_out else None
    fit_cases, held_out = [], []
    for path in args.cases:
        for c in load_cases(path):
            (held_out if Path(path).resolve() == held_path and c.get("split") == "held_out" else fit_cases).append(c)
    judge = FactJudge({**{f: 0.0 for f in FEATURES}, "bias": 0.0}, models_dir=args.models_dir,
                      features_version=FEATURES_VERSION)

    def feats(cs):
        return judge.features([c["edit_fact"] for c in cs], [c["answer"] for c in cs], [c["original_fact"] for c in cs])

    report = evaluate(fit_cases, feats(fit_cases), args.l2)
    w = report["weights"]

    def accuracy(cs) -> dict:
        logit = feats(cs) @ torch.tensor([w[f] for f in FEATURES], dtype=torch.float64) + w["bias"]
        labels = torch.tensor([bool(c["contradicts"]) for c in cs])
        return {"cases": len(cs), "accuracy": float(((logit > 0) == labels).double().mean())}

    if held_out:
        report["held_out"] = accuracy(held_out)
    for path in args.untouched:
        report[f"untouched {Path(path).name}"] = accuracy(load_cases(path))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
