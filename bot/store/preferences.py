"""Members' own /draw defaults and reply language (/settings), the same in every server."""

from __future__ import annotations

from dataclasses import replace

import aiosqlite

from bot.store.base import StoreBase
from bot.store.records import USER_SETTINGS_COLUMNS, UserSettings


class PreferencesMixin(StoreBase):
    """The ``user_settings`` table, mirrored in memory: /draw reads it before its first answer."""

    _user_settings_cache: dict[int, UserSettings]

    async def _load_user_settings(self, db: aiosqlite.Connection) -> None:
        columns = ", ".join(USER_SETTINGS_COLUMNS)
        self._user_settings_cache = {}
        for row in await db.execute_fetchall(f"SELECT user_id, {columns} FROM user_settings"):
            values = {name: row[name] for name in USER_SETTINGS_COLUMNS}
            if values["spoiler"] is not None:
                values["spoiler"] = bool(values["spoiler"])
            self._user_settings_cache[row["user_id"]] = UserSettings(**values)

    def user_settings(self, user_id: int) -> UserSettings:
        """A member's settings; all ``None`` for one who set nothing. From memory, never waits."""
        return self._user_settings_cache.get(user_id, UserSettings())

    async def set_user_settings(self, user_id: int, settings: UserSettings) -> None:
        """Replace a member's settings (validated by the caller); all ``None`` deletes the row."""
        async with self._transaction(write=True) as db:
            if settings == UserSettings():
                await self._write(db, "DELETE FROM user_settings WHERE user_id = ?", (user_id,))
            else:
                values: dict[str, object] = {
                    name: getattr(settings, name) for name in USER_SETTINGS_COLUMNS
                }
                values |= {"user_id": user_id, "updated_at": self._clock()}
                columns = ", ".join(values)
                marks = ", ".join("?" * len(values))
                updates = ", ".join(
                    f"{name} = excluded.{name}" for name in values if name != "user_id"
                )
                await self._write(
                    db,
                    f"INSERT INTO user_settings ({columns}) VALUES ({marks}) "
                    f"ON CONFLICT (user_id) DO UPDATE SET {updates}",
                    list(values.values()),
                )
        if settings == UserSettings():
            self._user_settings_cache.pop(user_id, None)
        else:
            self._user_settings_cache[user_id] = settings

    async def update_user_settings(self, user_id: int, **changes: object) -> UserSettings:
        """Change some of a member's settings (``None`` unsets one); returns the new ones."""
        settings = replace(self.user_settings(user_id), **changes)  # type: ignore[arg-type]
        await self.set_user_settings(user_id, settings)
        return settings
