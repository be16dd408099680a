"""Conversations kept per id in the process: what a reload or a second tab of the chat page finds."""

from __future__ import annotations

import threading

from internlm_demo.ui.conversation import Conversation, ConversationStore, Message, PendingReply, collect


def test_an_id_finds_its_conversation_and_the_oldest_is_forgotten_past_capacity():
    store = ConversationStore(capacity=2)
    first_id, first = store.open(None)
    second_id, second = store.open(None)
    second.pending = PendingReply(query="q", history=[], seed=1)
    assert store.open(first_id) == (first_id, first)  # used again: now the most recent
    third_id, _ = store.open(None)
    assert len(store) == 2 and len({first_id, second_id, third_id}) == 3
    assert store.open(first_id)[1] is first  # kept: the second was used longest ago
    fresh_id, fresh = store.open(second_id)
    assert fresh_id != second_id and fresh.messages == []  # forgotten: a new conversation under a new id
    assert second.pending.stop.is_set()  # its running reply was told to stop when it was forgotten


def test_a_finished_reply_is_collected_once_by_pages_running_at_once():
    conversation = Conversation(messages=[Message("user", "hello")])
    pending = PendingReply(query="hello", history=[], seed=1, text="hi there")
    pending.done.set()
    conversation.pending = pending
    start = threading.Barrier(8)

    def page_run():
        start.wait()
        collect(conversation)

    threads = [threading.Thread(target=page_run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [(m.role, m.content) for m in conversation.messages] == [("user", "hello"), ("assistant", "hi there")]
