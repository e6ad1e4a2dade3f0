"""Generate the instruction prompts of the real-weights experiment (configs/smollm2_pruned.py).

    python -m dpkd_jax.data.make_instruct_prompts   # rewrites dpkd_jax/data/prompts/*

Eight kinds of request, each from its own templates and word lists written here (no copied
text): open QA, closed QA over a given passage, brainstorming, classification, summarising a
given passage, rewriting, short arithmetic, and lists. Prompts only: the responses are the
teacher's (greedy, chat template), computed and cached by the experiment. Deterministic from
the seed; evaluation prompts never repeat a training prompt.
"""

from __future__ import annotations

import json
import os
import random

OUT_DIR = os.path.join(os.path.dirname(__file__), "prompts")
N_TRAIN, N_EVAL, SEED = 2000, 200, 1234

TOWNS = ["Alderbrook", "Bramford", "Calloway", "Dunmere", "Eastholm", "Fenwick", "Glenrow", "Harlow Bay",
         "Ivydale", "Juniper Falls", "Kestrel Point", "Larchmont", "Millbridge", "Northcliff", "Oakhaven",
         "Pinecrest", "Queensmoor", "Redwater", "Stonefield", "Thornbury", "Upton Vale", "Westmarch"]
INDUSTRIES = ["fishing", "wool weaving", "apple farming", "glass making", "tourism", "shipbuilding",
              "cheese making", "timber", "pottery", "coffee roasting", "salt mining", "clock making"]
LANDMARKS = ["an old stone bridge", "a red lighthouse", "a covered market", "a clock tower", "a botanical garden",
             "a narrow-gauge railway", "a windmill", "a lake with a small island"]
PEOPLE = ["Mara", "Tomas", "Ines", "Kofi", "Lena", "Ravi", "Yuki", "Omar", "Elsa", "Pablo", "Nadia", "Chen"]
JOBS = ["baker", "teacher", "nurse", "carpenter", "pilot", "gardener", "librarian", "chemist", "painter", "chef"]
HOBBIES = ["hiking", "chess", "painting", "cycling", "gardening", "baking", "swimming", "photography",
           "knitting", "running", "reading", "birdwatching"]
TOPICS = ["sleep", "exercise", "recycling", "saving money", "learning a language", "drinking water",
          "reading to children", "walking to work", "planting trees", "turning off lights", "eating vegetables",
          "taking breaks at work"]
CONCEPTS = ["a volcano", "a battery", "a library", "photosynthesis", "a calendar", "a bridge", "a vaccine",
            "gravity", "a compass", "an election", "a rainbow", "a thermometer", "an orchestra", "a budget",
            "a map", "a glacier", "a password", "a recipe", "a museum", "an eclipse"]
OCCASIONS = ["a rainy afternoon", "a child's birthday party", "a team meeting", "a weekend in the city",
             "a school fundraiser", "a picnic", "a long train journey", "a first day at a new job",
             "a family dinner", "a garden party"]
THINGS_TO_NAME = ["a bakery", "a bookshop", "a pet cat", "a sailing boat", "a coffee shop", "a robot",
                  "a hiking club", "a board game", "a podcast about cooking", "a travel blog"]
ANIMALS = {"dog": "mammal", "eagle": "bird", "salmon": "fish", "lizard": "reptile", "whale": "mammal",
           "sparrow": "bird", "shark": "fish", "turtle": "reptile", "horse": "mammal", "owl": "bird",
           "trout": "fish", "snake": "reptile", "bat": "mammal", "penguin": "bird", "crocodile": "reptile",
           "tuna": "fish", "rabbit": "mammal", "parrot": "bird"}
FOODS = {"apple": "fruit", "carrot": "vegetable", "banana": "fruit", "potato": "vegetable", "cherry": "fruit",
         "onion": "vegetable", "mango": "fruit", "spinach": "vegetable", "grape": "fruit", "broccoli": "vegetable"}
GOOD = ["loved", "enjoyed", "was delighted by", "would happily recommend", "was impressed by"]
BAD = ["hated", "was disappointed by", "regret buying", "would not recommend", "was annoyed by"]
PRODUCTS = ["this blender", "the new phone", "this hotel", "the restaurant on Main Street", "this novel",
            "the headphones", "this backpack", "the train service", "this film", "the coffee machine"]
SENTENCES = ["{p} walks to the market every morning.", "{p} writes a letter to a friend.",
             "The {j} opens the shop at nine.", "{p} plants tomatoes in the garden.",
             "The children play football after school.", "{p} cooks soup for the whole family.",
             "The {j} fixes the broken chair.", "{p} reads a book on the train.",
             "The storm closes the road to {t}.", "{p} paints the fence blue."]
CATEGORIES = ["fruits", "colours", "musical instruments", "kitchen tools", "sports", "planets", "vegetables",
              "things you find in a classroom", "types of weather", "farm animals", "board games", "tools"]
WORDS = ["river", "apple", "candle", "window", "garden", "pencil", "mountain", "basket", "thunder", "ladder",
         "orange", "violin", "meadow", "lantern", "feather", "bottle"]


def passage(r):
    t, ind, lm = r.choice(TOWNS), r.choice(INDUSTRIES), r.choice(LANDMARKS)
    year, pop = r.randrange(1650, 1950), r.randrange(2, 90) * 100
    p, j = r.choice(PEOPLE), r.choice(JOBS)
    text = (f"{t} is a small town founded in {year}. About {pop} people live there, and most of them work in "
            f"{ind}. Visitors come to see {lm}. The town's best-known resident is {p}, a {j} who started a "
            f"yearly festival celebrating {ind}.")
    facts = {"When was {t} founded?": year, "How many people live in {t}?": pop,
             "What do most people in {t} work in?": ind, "What do visitors come to {t} to see?": lm,
             "Who is the best-known resident of {t}?": p, "What is {p}'s job?": j}
    q = r.choice(list(facts)).format(t=t, p=p)
    return text, q


def open_qa(r):
    forms = [f"Explain what {r.choice(CONCEPTS)} is in one or two sentences.",
             f"Why is {r.choice(TOPICS)} good for people?",
             f"What does a {r.choice(JOBS)} do?",
             f"Give one tip for someone who wants to start {r.choice(HOBBIES)}.",
             f"How would you describe {r.choice(CONCEPTS)} to a child?",
             "What is the difference between {} and {}?".format(*r.sample(CONCEPTS, 2)),
             f"Why might a {r.choice(JOBS)} enjoy {r.choice(HOBBIES)}?"]
    return r.choice(forms), ""


def closed_qa(r):
    text, q = passage(r)
    return f"Answer the question using the passage. {q}", text


def brainstorm(r):
    n = r.choice([3, 4, 5])
    forms = [f"Suggest {n} activities for {r.choice(OCCASIONS)}.", f"Give {n} names for {r.choice(THINGS_TO_NAME)}.",
             f"Brainstorm {n} ways to make {r.choice(TOPICS)} easier.",
             f"What are {n} gifts for someone who likes {r.choice(HOBBIES)}?",
             f"Give {n} tips on {r.choice(TOPICS)} for a busy {r.choice(JOBS)}.",
             f"Suggest {n} ways to enjoy {r.choice(HOBBIES)} during {r.choice(OCCASIONS)}."]
    return r.choice(forms), ""


def classify(r):
    k = r.randrange(3)
    if k == 0:
        a = r.choice(list(ANIMALS))
        return f"Is a {a} a mammal, a bird, a fish or a reptile? Answer with one word.", ""
    if k == 1:
        f = r.choice(list(FOODS))
        return f"Is {'an' if f[0] in 'aeiou' else 'a'} {f} a fruit or a vegetable?", ""
    review = f"{r.choice(PEOPLE)} said: I {r.choice(GOOD + BAD)} {r.choice(PRODUCTS)}."
    return "Classify the sentiment of this review as positive or negative.", review


def summarise(r):
    text, _ = passage(r)
    return r.choice(["Summarize the passage in one sentence.", "Write a short summary of this text.",
                     "What is the main point of this passage?"]), text


def rewrite(r):
    s = r.choice(SENTENCES).format(p=r.choice(PEOPLE), j=r.choice(JOBS), t=r.choice(TOWNS))
    how = r.choice(["in the past tense", "as a question", "in a more formal style", "in the future tense",
                    "more politely", "with more detail"])
    return f"Rewrite this sentence {how}.", s


def arithmetic(r):
    a, b = r.randrange(2, 60), r.randrange(2, 40)
    op = r.choice([f"What is {a} plus {b}?", f"What is {a + b} minus {b}?", f"What is {a % 12 + 2} times {b % 9 + 2}?",
                   f"I have {a} apples and buy {b} more. How many apples do I have?"])
    return op, ""


def lists(r):
    k = r.randrange(3)
    if k == 0:
        return f"List {r.choice([3, 4, 5])} {r.choice(CATEGORIES)}.", ""
    if k == 1:
        return "Put these words in alphabetical order.", ", ".join(r.sample(WORDS, r.randint(4, 6)))
    xs = r.sample(range(1, 100), r.randint(4, 6))
    return "Sort these numbers from smallest to largest.", ", ".join(map(str, xs))


KINDS = {"open_qa": open_qa, "closed_qa": closed_qa, "brainstorming": brainstorm, "classification": classify,
         "summarization": summarise, "rewriting": rewrite, "arithmetic": arithmetic, "lists": lists}


def generate(n_train=N_TRAIN, n_eval=N_EVAL, seed=SEED):
    """(train, eval) records, kinds in turn, no prompt twice across both."""
    r = random.Random(seed)
    seen, out = set(), []
    names = list(KINDS)
    tries = 0
    while len(out) < n_train + n_eval:
        kind = names[len(out) % len(names)]
        ins, ctx = KINDS[kind](r)
        tries += 1
        if (ins, ctx) in seen:
            if tries > 100 * (n_train + n_eval):
                raise RuntimeError("the templates cannot make that many distinct prompts")
            continue
        seen.add((ins, ctx))
        out.append({"instruction": ins, "context": ctx, "response": "", "category": kind})
    r.shuffle(out)
    return out[:n_train], out[n_train:]


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    train, evaluation = generate()
    for name, rows in (("train", train), ("eval", evaluation)):
        with open(os.path.join(OUT_DIR, f"{name}.jsonl"), "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        print(f"{name}: {len(rows)} prompts -> {OUT_DIR}/{name}.jsonl")


if __name__ == "__main__":
    main()
