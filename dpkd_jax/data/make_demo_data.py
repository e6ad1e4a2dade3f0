"""Generate the demo's instruction data (Dolly format) and pre-training text.

    python -m dpkd_jax.data.make_demo_data   # rewrites dpkd_jax/data/demo/*

Tasks a tiny model can learn from a few thousand examples, with exact gold
answers (so exact match means something) and some sentence-length answers
(so RougeL means something). Deterministic from the seed.
"""

import json
import os
import random

CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Egypt": "Cairo",
            "Kenya": "Nairobi", "Peru": "Lima", "Chile": "Santiago", "Canada": "Ottawa", "Norway": "Oslo",
            "Greece": "Athens", "Poland": "Warsaw", "Cuba": "Havana", "Iran": "Tehran", "India": "Delhi",
            "China": "Beijing", "Russia": "Moscow", "Sweden": "Stockholm", "Ireland": "Dublin", "Austria": "Vienna"}
COLORS = ["red", "blue", "green", "black", "white", "yellow", "brown", "pink"]
THINGS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "banana": "yellow", "blood": "red",
          "chocolate": "brown", "flamingo": "pink", "sea": "blue", "leaf": "green"}
WORDS = ["cat", "dog", "tree", "house", "river", "stone", "bird", "apple", "chair", "lamp", "cloud", "road"]


def example(r: random.Random):
    kind = r.randrange(7)
    if kind == 0:
        a, b = r.randrange(10, 50), r.randrange(10, 50)
        return "Add the two numbers.", f"{a} and {b}", str(a + b), "arithmetic"
    if kind == 1:
        ws = r.sample(COLORS, r.randint(3, 5))
        return "Reverse the order of the words.", " ".join(ws), " ".join(reversed(ws)), "reverse"
    if kind == 2:
        c = r.choice(list(CAPITALS))
        return f"What is the capital of {c}?", "", CAPITALS[c], "capital"
    if kind == 3:
        xs = r.sample(range(1, 30), r.randint(3, 5))
        return "Sort the numbers from smallest to largest.", " ".join(map(str, xs)), " ".join(
            map(str, sorted(xs))), "sort"
    if kind == 4:
        w = r.choice(WORDS)
        return "Write the word in capital letters.", w, w.upper(), "upper"
    if kind == 5:
        ws = [r.choice(WORDS) for _ in range(r.randint(2, 7))]
        return "How many words are in the text?", " ".join(ws), str(len(ws)), "count"
    t = r.choice(list(THINGS))
    c = r.choice(list(CAPITALS))
    return (f"Write a sentence about the {t} and {c}.", "",
            f"The {t} is {THINGS[t]}, and the capital of {c} is {CAPITALS[c]}.", "sentence")


def main(out_dir=os.path.join(os.path.dirname(__file__), "demo"), seed=0, n_train=4000, n_eval=200):
    r = random.Random(seed)
    os.makedirs(out_dir, exist_ok=True)

    def write(name, n):
        with open(os.path.join(out_dir, name), "w") as f:
            for _ in range(n):
                ins, ctx, resp, cat = example(r)
                f.write(json.dumps({"instruction": ins, "context": ctx, "response": resp, "category": cat}) + "\n")
    write("train.jsonl", n_train)
    write("eval.jsonl", n_eval)
    with open(os.path.join(out_dir, "pretrain.txt"), "w") as f:
        for _ in range(3000):
            t, c = r.choice(list(THINGS)), r.choice(list(CAPITALS))
            ws = r.sample(WORDS, 3)
            f.write(r.choice([f"The capital of {c} is {CAPITALS[c]}.", f"The {t} is {THINGS[t]}.",
                              f"A {ws[0]}, a {ws[1]} and a {ws[2]}.", f"{CAPITALS[c]} is in {c}."]) + "\n")


if __name__ == "__main__":
    main()
