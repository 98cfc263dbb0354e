"""retail-tagging: tag a product title/description with its store category."""

from __future__ import annotations

from tuner.tasks._gen import LabelSpec, TaskSpec

__all__ = ["SPEC"]

_LABELS = (
    LabelSpec(
        "electronics",
        "consumer electronics, computers, audio and their accessories",
        train=(
            "{brand} wireless earbuds with noise cancelling, {color}",
            "{size} inch 4K smart TV with HDR by {brand}",
            "USB-C fast charger 65W, {color}",
            "bluetooth speaker, waterproof, 12h battery, {brand}",
            "gaming laptop {size} inch, 16GB RAM, 1TB SSD",
            "{brand} mechanical keyboard with RGB backlight",
            "portable power bank 20000mAh in {color}",
            "HDMI 2.1 cable, 2 m, braided",
        ),
        test=(
            "over-ear studio headphones from {brand}, {color} finish",
            "{size}-inch computer monitor with adjustable stand",
            "smart home hub with voice assistant, {color}",
        ),
    ),
    LabelSpec(
        "home_kitchen",
        "cookware, appliances, furniture and home goods",
        train=(
            "non-stick frying pan {size} cm, {brand}",
            "stainless steel kettle 1.7 L, {color}",
            "set of 6 ceramic dinner plates, {color}",
            "{brand} espresso machine with milk frother",
            "cotton bath towels, pack of 4, {color}",
            "memory foam pillow, queen size",
            "glass food storage containers with lids, 10 pieces",
            "{brand} stand mixer, 5 L bowl, {color}",
        ),
        test=(
            "cast iron dutch oven {size} cm in {color} enamel",
            "bamboo cutting board set with juice groove",
            "linen curtains for the living room, {color}, two panels",
        ),
    ),
    LabelSpec(
        "apparel",
        "clothing, shoes and fashion accessories",
        train=(
            "men's slim fit jeans, {color}, size {size}",
            "{brand} women's running shoes, {color}",
            "cotton crew neck t-shirt, pack of 3",
            "wool winter scarf in {color}",
            "{brand} hooded rain jacket, waterproof",
            "leather belt with metal buckle, {color}",
            "kids' pyjama set, {color}, age {size}",
            "women's summer dress, floral, {color}",
        ),
        test=(
            "knitted cardigan with buttons, {color}, {brand}",
            "unisex canvas sneakers, size {size}",
            "men's formal shirt, long sleeves, {color}",
        ),
    ),
    LabelSpec(
        "beauty",
        "cosmetics, skin care, hair care and fragrance",
        train=(
            "{brand} hydrating face cream, 50 ml",
            "matte lipstick in {color}",
            "sulfate-free shampoo for curly hair, 400 ml",
            "vitamin C serum with hyaluronic acid",
            "{brand} eau de parfum, 100 ml",
            "waterproof mascara, {color}",
            "SPF 50 sunscreen lotion for sensitive skin",
            "nail polish set, 12 shades",
        ),
        test=(
            "nourishing hair mask with argan oil by {brand}",
            "liquid foundation, shade {color}, 30 ml",
            "gentle foaming cleanser for oily skin",
        ),
    ),
    LabelSpec(
        "toys_games",
        "toys, board games, puzzles and kids' play sets",
        train=(
            "building blocks set, 500 pieces, ages {size}+",
            "{brand} remote control car, {color}",
            "family board game for 2-6 players",
            "plush teddy bear, 30 cm, {color}",
            "1000 piece jigsaw puzzle of a mountain lake",
            "wooden train set with tracks",
            "{brand} doll house with furniture",
            "card game for kids, ages {size} and up",
        ),
        test=(
            "magnetic tiles construction kit for children by {brand}",
            "strategy board game with miniatures, {size}+ years",
            "toy kitchen playset with pretend food, {color}",
        ),
    ),
    LabelSpec(
        "sports_outdoors",
        "sports equipment, fitness gear, camping and outdoor gear",
        train=(
            "yoga mat 6 mm, non-slip, {color}",
            "{brand} 2-person camping tent, waterproof",
            "adjustable dumbbells, {size} kg pair",
            "mountain bike helmet, {color}",
            "insulated water bottle 750 ml, {brand}",
            "football, official size 5",
            "hiking backpack 40 L with rain cover",
            "resistance bands set, 5 levels",
        ),
        test=(
            "down sleeping bag rated to -5 C, {color}",
            "{brand} tennis racket with carry case",
            "foldable treadmill for home workouts",
        ),
    ),
)

SPEC = TaskSpec(
    name="retail-tagging",
    title="product listing",
    labels=_LABELS,
    slots={
        "brand": (
            ("Acme", "Northwind", "Zenith", "Orbit", "Lumen", "Kestrel"),
            ("Vantor", "Halcyon", "Brightway"),
        ),
        "color": (
            ("black", "white", "navy blue", "red", "grey", "green"),
            ("burgundy", "teal", "mustard yellow"),
        ),
        "size": (("8", "10", "12", "24", "32", "40"), ("6", "14", "27")),
    },
    openers=(("",), ("",)),
    closers=(
        ("", "", "- free shipping", "- new", "(2024 model)", "- bestseller"),
        ("", "- limited edition", "- gift idea"),
    ),
    lowercase_rate=0.3,
)
