"""How another location's customer looks when masked (pure; no database)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dedup.masking import MASK, Revealer, mask_email, mask_name, mask_phone, mask_text


def test_examples() -> None:
    assert mask_name("Maria Garcia") == "M••• G•••"
    assert mask_phone("+61 412 345 678") == "+61 4•• ••• •78"
    assert mask_phone("0412 345 678") == "041• ••• •78"
    assert mask_phone("123") == "•••"
    assert mask_phone("0412 345 678 ext 9") == "041• ••• ••8 ••• 9"  # letters say nothing and are masked
    assert mask_email("maria@example.com") == "m•••@example.com"
    assert mask_email("not an email") == "•••"
    assert mask_text("1 George St") == "•••"
    assert mask_name("") == mask_phone("") == mask_email("") == mask_text("  ") == ""


@given(st.text(alphabet="0123456789 +-()", max_size=30))
def test_a_masked_phone_shows_at_most_five_digits_and_keeps_its_shape(phone: str) -> None:
    masked = mask_phone(phone)
    assert sum(ch.isdigit() for ch in masked) <= 5
    if sum(ch.isdigit() for ch in phone) >= 7:
        assert len(masked) == len(phone)
        assert masked[-2:] == phone[-2:] or not phone[-1].isdigit()


@given(st.text(max_size=40))
def test_a_masked_name_keeps_only_initials(name: str) -> None:
    masked = mask_name(name)
    assert len(masked.replace(MASK, "").replace(" ", "")) == len(name.split())


@given(local=st.text(alphabet="abcdefghij.", min_size=1, max_size=12), domain=st.sampled_from(["example.com", "x.org"]))
def test_a_masked_email_keeps_the_domain_and_one_letter(local: str, domain: str) -> None:
    assert mask_email(f"{local}@{domain}") == f"{local[0]}•••@{domain}"


def test_the_revealer_shows_what_the_viewer_already_reads() -> None:
    reveal = Revealer({"Maria Garcia", "+61 412 345 678"})
    assert reveal.name("maria  GARCIA") == "maria  GARCIA"
    assert reveal.name("Mariana Gomez") == "M••• G•••"
    assert reveal.key("+61412345679") == "+614••••••79"
    assert reveal.key("+61 412 345 678") == "+61 412 345 678"
    assert reveal.key("someone@example.com") == "s•••@example.com"
    assert Revealer(reveal_all=True).email("someone@example.com") == "someone@example.com"
