"""Deterministic benchmark texts: short Russian/English support messages, long (250-400 words) ones, and pairs
of short messages (a text and a text_pair, as an NLI model or a cross-encoder reranker takes them).

A short text is what a customer writes to support: an optional greeting, one to three sentences about one
problem, an optional closing; 3 to 40 words, Russian or English. A long text strings sentences about several
problems together up to 250-400 words (more than the model's maximum length: it is truncated, as served).
The same seed always gives the same texts, so every round of a run (raw ONNX Runtime, served, PyTorch) sees the
same inputs. None of these sentences is in the demo model's training data.
"""
from __future__ import annotations

import random

SHORT_WORDS = (3, 40)
LONG_WORDS = (250, 400)

SENTENCES = {
    "ru": {
        "order": ("заказ до сих пор не пришёл, хотя прошло уже две недели",
                  "подскажите, пожалуйста, где сейчас находится посылка",
                  "курьер не приехал в назначенное время",
                  "не понимаю, как отследить посылку по трек-номеру",
                  "когда примерно доставят мой заказ"),
        "refund": ("хочу вернуть товар, он оказался не того размера",
                   "деньги за возврат так и не поступили на карту",
                   "верните деньги, я отказался от покупки",
                   "товар пришёл повреждённым, прошу вернуть оплату",
                   "как оформить возврат бракованной вещи"),
        "payment": ("с карты списали оплату дважды",
                    "платёж не проходит, банк пишет об ошибке",
                    "приложение закрывается при попытке оплаты",
                    "промокод не применяется при оплате",
                    "карта отклонена, хотя денег на ней достаточно"),
        "account": ("не могу войти в личный кабинет",
                    "код подтверждения не приходит по смс",
                    "забыл пароль и не получается его сбросить",
                    "аккаунт заблокирован без объяснения причин",
                    "после смены телефона не могу зайти в профиль"),
        "help": ("мне нужна помощь оператора",
                 "хочу пообщаться с живым сотрудником",
                 "подскажите, куда обратиться с вопросом",
                 "помогите разобраться, я ничего не понимаю",
                 "свяжите меня, пожалуйста, со специалистом"),
        "thanks": ("спасибо, вы очень помогли",
                   "огромное спасибо за быстрый ответ",
                   "всё получилось, благодарю за помощь",
                   "спасибо большое, вопрос решён",
                   "благодарю за терпение и подробные объяснения"),
    },
    "en": {
        "order": ("the parcel still has not arrived after two weeks",
                  "could you tell me where my package is right now",
                  "the courier did not show up at the scheduled time",
                  "I do not understand how to track the parcel with the tracking number",
                  "when will my order be delivered"),
        "refund": ("I want to return the item because it is the wrong size",
                   "the refund has not reached my card yet",
                   "please give me my money back, I cancelled the purchase",
                   "the item arrived damaged, I would like a refund",
                   "how do I send back a faulty product"),
        "payment": ("I was charged twice for the same order",
                    "the payment keeps failing and my bank shows an error",
                    "the app crashes when I try to pay",
                    "the promo code does not work at checkout",
                    "my card was declined although it has enough money"),
        "account": ("I cannot log in to my account",
                    "the verification code never arrives by text message",
                    "I forgot my password and the reset link does not work",
                    "my account was locked without any explanation",
                    "after changing my phone I cannot sign in to my profile"),
        "help": ("I need to talk to a support agent",
                 "I would like to speak to a real person",
                 "who should I contact with a question",
                 "please help me figure this out, I am lost",
                 "connect me with a specialist please"),
        "thanks": ("thanks a lot, you really helped me",
                   "thank you for the quick answer",
                   "it worked, thank you for your help",
                   "many thanks, the issue is solved",
                   "thank you for your patience and the detailed explanation"),
    },
}
GREETINGS = {"ru": ("Здравствуйте,", "Добрый день!", "Привет,", ""), "en": ("Hello,", "Hi!", "Good afternoon,", "")}
CLOSINGS = {"ru": ("Заранее спасибо.", "Жду ответа.", "", ""),
            "en": ("Thanks in advance.", "Waiting for a reply.", "", "")}


def _capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


def _short(rng: random.Random) -> str:
    language = rng.choice(("ru", "en"))
    topic = rng.choice(sorted(SENTENCES[language]))
    sentences = [_capitalized(sentence) + rng.choice((".", "!", "?", ""))
                 for sentence in rng.sample(SENTENCES[language][topic], rng.randint(1, 3))]
    words = " ".join([rng.choice(GREETINGS[language]), *sentences, rng.choice(CLOSINGS[language])]).split()
    if len(words) > SHORT_WORDS[1]:
        words = words[:SHORT_WORDS[1]]
    if len(words) < SHORT_WORDS[0]:
        words = (sentences[0] + " " + SENTENCES[language][topic][0]).split()[:SHORT_WORDS[1]]
    return " ".join(words)


def _long(rng: random.Random) -> str:
    language = rng.choice(("ru", "en"))
    target = rng.randint(*LONG_WORDS)
    words = rng.choice(GREETINGS[language]).split()
    while len(words) < target:
        topic = rng.choice(sorted(SENTENCES[language]))
        words.extend((_capitalized(rng.choice(SENTENCES[language][topic])) + ".").split())
    return " ".join(words[:target])


def short_texts(count: int = 200, seed: int = 7) -> list[str]:
    """`count` support messages of 3-40 words, about half Russian and half English."""
    rng = random.Random(seed)
    return [_short(rng) for _ in range(count)]


def long_texts(count: int = 24, seed: int = 11) -> list[str]:
    """`count` long messages of 250-400 words."""
    rng = random.Random(seed)
    return [_long(rng) for _ in range(count)]


def short_pairs(count: int = 200, seed: int = 13) -> list[tuple[str, str]]:
    """`count` pairs of short messages (3-40 words each)."""
    rng = random.Random(seed)
    return [(_short(rng), _short(rng)) for _ in range(count)]


TEXT_SETS = {"short": short_texts, "long": long_texts, "pairs": short_pairs}
