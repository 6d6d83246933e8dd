"""Why the sampler chose a patch, in words an expert reads above the task.

Raw component values are not comparable between components (BALD is in nats, the debris prior a
likelihood), so a patch's reasons are the components it ranks highest on among the patches of
its round, each said with its place ("2nd of 10").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from al_loop.sampling.acquisition import PRIOR_WEIGHTS, STRATEGIES

COMPONENT_WORDS: dict[str, str] = {
    "entropy": "the model is unsure of the class (entropy)",
    "margin": "its two likeliest classes are close (margin)",
    "least_confidence": "its top class is weak (least confidence)",
    "bald": "dropout samples of the model disagree (BALD)",
    "debris": "it looks like debris-covered ice",
    "cloud": "cloud may hide ice",
    "glacier": "it likely holds glacier",
}


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def why_chosen(components: Mapping[str, float], round_components: Sequence[Mapping[str, float]],
               strategy: str, top: int = 2) -> str:
    """The ``top`` components ``components`` ranks highest on among ``round_components`` (the
    round's patches, this one included), of those ``strategy`` weighs (a cold start: the priors),
    in words; "at random" for a random choice."""
    weighed = STRATEGIES.get(strategy) or (PRIOR_WEIGHTS if strategy == "prior" else components)
    named = [name for name in components if name in COMPONENT_WORDS and name in weighed]
    if strategy == "random" or not named:
        return "chosen at random (the baseline every strategy is measured against)"
    places = {}
    for name in named:
        values = [c[name] for c in round_components if name in c]
        places[name] = 1 + sum(v > components[name] for v in values), len(values)
    best = sorted(named, key=lambda name: (places[name][0] / places[name][1], name))[:top]
    reasons = [f"{COMPONENT_WORDS[name]} ({_ordinal(places[name][0])} of {places[name][1]})" for name in best]
    return f"chosen by {strategy}: " + "; ".join(reasons)
