from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Event(_message.Message):
    __slots__ = ("topic", "text", "seq", "payload", "delay_ms")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    text: str
    seq: int
    payload: bytes
    delay_ms: int
    def __init__(self, topic: _Optional[str] = ..., text: _Optional[str] = ..., seq: _Optional[int] = ..., payload: _Optional[bytes] = ..., delay_ms: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("client_id", "seq", "note")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    seq: int
    note: str
    def __init__(self, client_id: _Optional[str] = ..., seq: _Optional[int] = ..., note: _Optional[str] = ...) -> None: ...
