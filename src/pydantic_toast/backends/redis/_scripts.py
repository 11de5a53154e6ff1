"""The Lua script of save_records_checked, with the helpers that build its arguments and read its reply."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..base import (
    RevisionConflict,
    StoredRecord,
)
from ._values import _HEAD_BYTES, _TAIL_BYTES

if TYPE_CHECKING:
    pass

# save_records_checked in one script: a script runs alone on the server, so every check happens
# before any write, and a batch with a conflict writes nothing. ARGV holds three values per key:
# the value, the expected revision ('' = unchecked) and the expiry in ms ('' = none). A missing
# key and a value without a revision count as revision 0. A key whose value has the same mark
# as the one to write (see _check_mark: same updated_at and revision) holds this very write: a
# retry after a lost reply. Returns the conflicts as [key index, found revision ('' = no record), ...].
_CHECKED_WRITE = f"""
local conflicts = {{}}
for i, key in ipairs(KEYS) do
  local expected = ARGV[3 * i - 1]
  if expected ~= '' then
    local value = ARGV[3 * i - 2]
    local mark = redis.call('GETRANGE', key, 0, {_HEAD_BYTES - 1})
    local found = ''
    local written = nil
    if string.byte(mark, 1) == 0 then
      found = string.match(mark, '^.{{"revision":(%d+),') or '0'
      written = string.sub(value, 1, {_HEAD_BYTES})
    elseif mark ~= '' then
      mark = redis.call('GETRANGE', key, -{_TAIL_BYTES}, -1)
      found = string.match(mark, ',"revision":(%d+)}}$') or '0'
      written = string.sub(value, -{_TAIL_BYTES})
    end
    if (found == '' and '0' or found) ~= expected and mark ~= written then
      conflicts[#conflicts + 1] = i
      conflicts[#conflicts + 1] = found
    end
  end
end
if #conflicts == 0 then
  for i, key in ipairs(KEYS) do
    local expiry = ARGV[3 * i]
    if expiry == '' then
      redis.call('SET', key, ARGV[3 * i - 2])
    else
      redis.call('SET', key, ARGV[3 * i - 2], 'PX', expiry)
    end
  end
end
return conflicts
"""


def _script_arguments(
    records: Sequence[StoredRecord], writes: Sequence[tuple[bytes, bytes, int | None]]
) -> list[bytes | str]:
    arguments: list[bytes | str] = []
    for record, (_, value, expiry) in zip(records, writes, strict=True):
        arguments.append(value)
        arguments.append("" if record.revision is None else str(record.revision - 1))
        arguments.append("" if expiry is None else str(expiry))
    return arguments


def _conflicts_of(records: Sequence[StoredRecord], reply: Sequence[Any]) -> list[RevisionConflict]:
    conflicts: list[RevisionConflict] = []
    for index, found in zip(reply[::2], reply[1::2], strict=True):
        record = records[int(index) - 1]
        assert record.revision is not None
        conflicts.append(
            RevisionConflict(record.id, record.class_name, record.revision - 1, int(found) if found else None)
        )
    return conflicts
