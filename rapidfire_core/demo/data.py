"""Deterministic, offline demo datasets.

Everything here is generated from templates with a seeded ``random.Random``, so
the same ``(n, seed)`` always gives the same rows, on any machine, with nothing
downloaded. The shapes follow the public datasets the seeds use:

- ``support_dataset``: Bitext customer support (``instruction``, ``response``,
  ``intent``, ``category``). The response is a fixed template per intent with the
  slots (order number, name, city, ...) copied from the instruction, so a LoRA
  fine-tune has a clear, learnable mapping and its loss falls within tens of steps.
- ``preference_dataset``: TRL's standard (text) preference format
  (``prompt``, ``chosen``, ``rejected``) for DPO.
- ``math_prompt_dataset``: ``prompt`` + ``answer`` tiny arithmetic for GRPO
  (reward functions live in ``rapidfire_core.demo.rewards``).
- ``pretrain_corpus``: generic in-domain text (support sentences shuffled across
  intents, instructions, arithmetic) used to pretrain the tiny demo model. It never
  contains a full instruction -> response pair, so the fine-tune still has to learn
  the mapping and the chat format.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from datasets import Dataset

SYSTEM_PROMPT = (
    "You are a helpful and friendly customer support assistant. "
    "Please answer the user's query to the best of your ability."
)

FIRST_NAMES = [
    "Anna", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "James",
    "Kofi", "Lena", "Marco", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara",
]  # fmt: skip
CITIES = [
    "Berlin", "Boston", "Chicago", "Dublin", "Lisbon", "London", "Madrid", "Oslo",
    "Paris", "Prague", "Rome", "Seattle", "Toronto", "Vienna",
]  # fmt: skip
PAYMENT_METHODS = ["credit card", "debit card", "PayPal", "bank transfer", "gift card"]


@dataclass(frozen=True)
class Intent:
    name: str
    category: str
    instructions: tuple[str, ...]  # templates; slots: {order} {city} {method} {email}
    response: str  # one template per intent; same slots + {greeting}


# Each intent has 5-6 phrasings; the response template is the learnable target.
INTENTS: tuple[Intent, ...] = (
    Intent(
        "cancel_order",
        "ORDER",
        (
            "I want to cancel order {order}",
            "how do I cancel my order {order}?",
            "please cancel the order {order}, I changed my mind",
            "can you help me cancel purchase {order}",
            "cancel order {order} please",
            "I need to cancel the order {order} I made yesterday",
        ),
        "{greeting} I understand you want to cancel order {order}. I have started the cancellation, "
        "and you will get a confirmation email within 24 hours. Is there anything else I can help you with?",
    ),
    Intent(
        "change_order",
        "ORDER",
        (
            "I need to change the items in order {order}",
            "can I modify my order {order}?",
            "how do I add an item to order {order}",
            "I want to update order {order}",
            "please help me edit the order {order}",
        ),
        "{greeting} You can change order {order} until it ships. Open Your Orders, select order {order} "
        "and click Edit Items. I am happy to help if anything goes wrong.",
    ),
    Intent(
        "track_order",
        "ORDER",
        (
            "where is my order {order}?",
            "track order {order}",
            "can you tell me the status of order {order}",
            "I have not received my order {order} yet",
            "when will order {order} arrive?",
            "I want to know where the package for order {order} is",
        ),
        "{greeting} Order {order} has shipped and is on its way. You can follow it live in Your Orders "
        "under Track Package. Delivery usually takes 3 to 5 business days.",
    ),
    Intent(
        "get_refund",
        "REFUND",
        (
            "I want a refund for order {order}",
            "how can I get my money back for order {order}?",
            "please refund order {order}",
            "I would like to request a refund on order {order}",
            "can I get a refund, the order {order} arrived broken",
        ),
        "{greeting} I am sorry about order {order}. I have opened a refund request, and the money will be "
        "returned to your original payment method within 5 to 7 business days.",
    ),
    Intent(
        "check_refund_policy",
        "REFUND",
        (
            "what is your refund policy?",
            "how many days do I have to return an item?",
            "can you explain the refund policy",
            "do you give refunds on sale items?",
            "I want to read the return and refund rules",
        ),
        "{greeting} You can return any item within 30 days of delivery for a full refund. Sale items can "
        "be returned too. Just start a return from Your Orders.",
    ),
    Intent(
        "change_shipping_address",
        "SHIPPING",
        (
            "I need to change my shipping address to {city}",
            "please update my delivery address, I moved to {city}",
            "can you ship my order to {city} instead?",
            "I want my address changed to my new place in {city}",
            "how do I set {city} as my shipping address",
        ),
        "{greeting} I can help you ship to {city}. Go to Account Settings, open Addresses and add your new "
        "address in {city}. Orders that have not shipped will use it.",
    ),
    Intent(
        "delivery_options",
        "DELIVERY",
        (
            "what delivery options do you have?",
            "do you offer express shipping?",
            "how fast can you deliver?",
            "can I choose next day delivery",
            "which shipping methods are available",
        ),
        "{greeting} We offer standard delivery in 3 to 5 business days, express delivery in 2 days and next "
        "day delivery in most cities. You can pick one at checkout.",
    ),
    Intent(
        "reset_password",
        "ACCOUNT",
        (
            "I forgot my password, my email is {email}",
            "how do I reset the password for {email}?",
            "I cannot log in to {email}, please help me reset my password",
            "reset my password please, the account is {email}",
            "I need a new password for my account {email}",
        ),
        "{greeting} I have sent a password reset link to {email}. Open the email and follow the link to "
        "choose a new password. The link is valid for one hour.",
    ),
    Intent(
        "create_account",
        "ACCOUNT",
        (
            "I want to open a new account",
            "how do I sign up?",
            "can you help me create an account",
            "I would like to register as a new customer",
            "what do I need to make an account?",
        ),
        "{greeting} Creating an account is easy. Click Sign Up at the top of the page, enter your email and "
        "choose a password. You will get a welcome email right away.",
    ),
    Intent(
        "delete_account",
        "ACCOUNT",
        (
            "please delete my account",
            "I want to close my account for good",
            "how do I remove my account and my data?",
            "can you delete the account {email}",
            "I no longer want an account with you",
        ),
        "{greeting} I am sorry to see you go. I have started closing your account, and all your data will be "
        "removed within 30 days. You will get an email when it is done.",
    ),
    Intent(
        "payment_issue",
        "PAYMENT",
        (
            "my payment with {method} failed",
            "I cannot pay with my {method}",
            "why was my {method} payment declined?",
            "I have a problem paying with {method}",
            "the checkout does not accept my {method}",
        ),
        "{greeting} I am sorry your {method} payment did not go through. Please check the details and try "
        "again. If it still fails, you can choose another payment method at checkout.",
    ),
    Intent(
        "contact_human_agent",
        "CONTACT",
        (
            "I want to talk to a real person",
            "can I speak with a human agent?",
            "please connect me to customer service",
            "how do I reach a live agent",
            "I need to talk to someone from support",
        ),
        "{greeting} Of course. I am connecting you to a human agent now. The current waiting time is about "
        "5 minutes. Thank you for your patience.",
    ),
    Intent(
        "check_invoice",
        "INVOICE",
        (
            "can I see the invoice for order {order}?",
            "I need a copy of the invoice for order {order}",
            "where do I find my invoice for order {order}",
            "please send me the bill for order {order}",
            "how do I download the invoice of order {order}",
        ),
        "{greeting} You can download the invoice for order {order} from Your Orders. Select order {order} "
        "and click Invoice. I have also sent a copy to your email.",
    ),
)

INTENT_NAMES: tuple[str, ...] = tuple(i.name for i in INTENTS)
_BY_NAME: dict[str, Intent] = {i.name: i for i in INTENTS}

# Greeting/prefix/suffix variations: the response greeting copies the name when given.
_PREFIXES = ("", "", "Hi, ", "Hello, ", "Hi, this is {name}. ", "Hello, my name is {name} and ")
_SUFFIXES = ("", "", ".", "!", " Thanks!", " Thank you.")

# Rude / unhelpful replies used as DPO "rejected" answers half of the time.
_RUDE_RESPONSES = (
    "Not my problem. Figure it out yourself.",
    "I do not have time for this. Read the website.",
    "That is a silly question. Try again later.",
    "We cannot help you. Goodbye.",
    "Stop writing to us about this.",
)


def _slots(rng: random.Random) -> dict[str, str]:
    name = rng.choice(FIRST_NAMES)
    return {
        "order": f"#{rng.randint(10000, 99999)}",
        "city": rng.choice(CITIES),
        "method": rng.choice(PAYMENT_METHODS),
        "email": f"{name.lower()}{rng.randint(1, 99)}@example.com",
        "name": name,
    }


def _support_row(rng: random.Random, intent: Intent) -> dict[str, str]:
    slots = _slots(rng)
    body = rng.choice(intent.instructions).format(**slots)
    prefix_template = rng.choice(_PREFIXES)
    if prefix_template == "" or prefix_template.endswith(". "):  # sentence start
        body = body[0].upper() + body[1:]
    instruction = prefix_template.format(**slots) + body
    suffix = rng.choice(_SUFFIXES)
    ends_sentence = instruction.endswith((".", "?", "!"))
    if suffix in (".", "!"):
        suffix = "" if ends_sentence else suffix
    elif suffix and not ends_sentence:
        suffix = "." + suffix
    instruction += suffix
    # The reply greets by name only when the customer gave one: a slot the model must copy.
    greeting = f"Hi {slots['name']}!" if "{name}" in prefix_template else "Hello!"
    response = intent.response.format(greeting=greeting, **slots)
    return {
        "instruction": instruction,
        "response": response,
        "intent": intent.name,
        "category": intent.category,
    }


def support_dataset(n: int = 512, seed: int = 0) -> Dataset:
    """``n`` customer-support rows (Bitext-like), cycling through the intents in a seeded order.

    Columns: ``instruction``, ``response``, ``intent``, ``category`` (all str).
    """
    rng = random.Random(f"support-{seed}")
    rows = []
    for i in range(n):
        if i % len(INTENTS) == 0:  # balanced: every block of 13 rows holds each intent once
            order = list(INTENTS)
            rng.shuffle(order)
        rows.append(_support_row(rng, order[i % len(INTENTS)]))
    return Dataset.from_list(rows)


def preference_dataset(n: int = 256, seed: int = 0, *, conversational: bool = False) -> Dataset:
    """DPO data: ``prompt`` (the customer's message), ``chosen`` (the right intent's response),
    ``rejected`` (another intent's response or a rude reply, alternating).

    Standard text format by default; ``conversational=True`` gives TRL's conversational
    preference format (lists of ``{"role", "content"}`` messages).
    """
    rng = random.Random(f"preference-{seed}")
    rows = []
    for i in range(n):
        intent = rng.choice(INTENTS)
        row = _support_row(rng, intent)
        if i % 2 == 0:
            wrong = rng.choice([x for x in INTENTS if x.name != intent.name])
            rejected = wrong.response.format(greeting="Hello!", **_slots(rng))
        else:
            rejected = rng.choice(_RUDE_RESPONSES)
        if conversational:
            rows.append(
                {
                    "prompt": [{"role": "user", "content": row["instruction"]}],
                    "chosen": [{"role": "assistant", "content": row["response"]}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                }
            )
        else:
            rows.append({"prompt": row["instruction"], "chosen": row["response"], "rejected": rejected})
    return Dataset.from_list(rows)


_MATH_TEMPLATES = ("What is {a}{op}{b}?", "Compute {a}{op}{b}.", "{a}{op}{b} =")


def math_prompt_dataset(n: int = 128, seed: int = 0, *, conversational: bool = False) -> Dataset:
    """GRPO prompts: ``prompt`` (e.g. ``"What is 3+4?"``) and ``answer`` (the integer as str).

    Operands 0..9 with ``+``, ``-``, ``*``. ``conversational=True`` makes ``prompt`` a
    one-message user conversation.
    """
    rng = random.Random(f"math-{seed}")
    ops: dict[str, Callable[[int, int], int]] = {"+": lambda a, b: a + b, "-": lambda a, b: a - b,
                                                  "*": lambda a, b: a * b}  # fmt: skip
    rows = []
    for _ in range(n):
        a, b, op = rng.randint(0, 9), rng.randint(0, 9), rng.choice(sorted(ops))
        text = rng.choice(_MATH_TEMPLATES).format(a=a, b=b, op=op)
        prompt = [{"role": "user", "content": text}] if conversational else text
        rows.append({"prompt": prompt, "answer": str(ops[op](a, b))})
    return Dataset.from_list(rows)


def formatting_function(row: dict) -> dict:
    """Format one support row as a conversational prompt-completion example (as in the cookbook)."""
    return {
        "prompt": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": row["instruction"]},
        ],
        "completion": [{"role": "assistant", "content": row["response"]}],
    }


def _split_sentences(text: str) -> list[str]:
    out, cur = [], ""
    for word in text.split(" "):
        cur = f"{cur} {word}" if cur else word
        if word.endswith((".", "?", "!")):
            out.append(cur)
            cur = ""
    if cur:
        out.append(cur)
    return out


def pretrain_corpus(n: int = 2048, seed: int = 0) -> list[str]:
    """Generic in-domain text for pretraining the tiny demo model.

    Three kinds of line, mixed: 3-4 response sentences drawn from *different*
    intents (so the model learns the words and sentence shapes but not which reply
    belongs to which request), a few customer messages, and arithmetic facts.
    """
    rng = random.Random(f"pretrain-{seed}")
    lines = []
    for i in range(n):
        kind = i % 4
        if kind in (0, 1):
            sentences = []
            for intent in rng.sample(INTENTS, k=rng.randint(3, 4)):
                greeting = rng.choice(["Hello!", f"Hi {rng.choice(FIRST_NAMES)}!"])
                parts = _split_sentences(intent.response.format(greeting=greeting, **_slots(rng)))
                sentences.append(rng.choice(parts[1:]))
            lines.append(" ".join(sentences))
        elif kind == 2:
            lines.append(" ".join(_support_row(rng, rng.choice(INTENTS))["instruction"] for _ in range(3)))
        else:
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            lines.append(f"What is {a}+{b}? {a + b}. What is {a}*{b}? {a * b}. {a}-{b} = {a - b}.")
    return lines


def tokenizer_corpus(seed: int = 0) -> list[str]:
    """Text the demo tokenizer is trained on: all templates rendered a few times, plus math."""
    texts = list(pretrain_corpus(512, seed))
    ds = support_dataset(len(INTENTS) * 8, seed)
    texts += [r["instruction"] for r in ds] + [r["response"] for r in ds]
    texts += [SYSTEM_PROMPT] * 32 + list(_RUDE_RESPONSES)
    texts += [r["prompt"] for r in math_prompt_dataset(64, seed)]
    return texts
