"""Splitting text into documents of segments for NSP."""

from llmjax.data.documents import split_documents

WIKI = """
 = Valkyria Chronicles =

 Senjō no Valkyria is a game .
 It was released in 2011 .

 = = Gameplay = =

 The player controls a squad .
 = Tower Building =

 The tower is tall .
"""


def test_wikitext_titles_start_documents_and_headings_are_dropped():
    assert split_documents(WIKI) == [
        ["Senjō no Valkyria is a game .", "It was released in 2011 .",
         "The player controls a squad ."],
        ["The tower is tall ."]]


def test_plain_text_documents_are_separated_by_blank_lines():
    assert split_documents("a b .\nc d .\n\n\ne f .\n") == [["a b .", "c d ."], ["e f ."]]
