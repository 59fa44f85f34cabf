"""/forget: a user's jobs, images and name go from every table."""

from __future__ import annotations

from bot.store.files import FilesMixin
from bot.store.records import UserSettings


class PrivacyMixin(FilesMixin):
    """A user taking their data back (/forget)."""

    _user_settings_cache: dict[int, UserSettings]

    async def forget_user(self, user_id: int) -> int:
        """Delete every job of this user, their image rows and /settings, and image files nobody
        else uses.

        Returns the number of jobs deleted. Rerolls others made of this user's jobs are kept with
        their parent link cleared; this user's id is also erased from ``deleted_by``.
        """
        async with self._transaction(write=True) as db:
            paths = [
                row[0]
                for row in await db.execute_fetchall(
                    "SELECT DISTINCT i.path FROM job_images i JOIN jobs j ON j.id = i.job_id "
                    "WHERE j.user_id = ? "
                    # The pictures their jobs started from: their uploads among them.
                    "UNION SELECT init_image FROM jobs "
                    "WHERE user_id = ? AND init_image IS NOT NULL",
                    (user_id, user_id),
                )
            ]
            # job_images rows go with their jobs (ON DELETE CASCADE), children's
            # parent_job_id becomes NULL (ON DELETE SET NULL).
            deleted = await self._write(db, "DELETE FROM jobs WHERE user_id = ?", (user_id,))
            await self._let_go_of(db, paths)
            await self._write(db, "DELETE FROM user_settings WHERE user_id = ?", (user_id,))
            await self._write(
                db, "UPDATE jobs SET deleted_by = NULL WHERE deleted_by = ?", (user_id,)
            )
            # A moderator who leaves keeps their server's bans, not their name on them.
            await self._write(
                db, "UPDATE banned_words SET added_by = 0 WHERE added_by = ?", (user_id,)
            )
            await self._write(
                db,
                "UPDATE guild_settings SET updated_by = 0 WHERE updated_by = ?",
                (user_id,),
            )
            # The audit keeps that a purge happened, not who was involved.
            await self._write(
                db, "UPDATE purges SET moderator_id = 0 WHERE moderator_id = ?", (user_id,)
            )
            await self._write(
                db,
                "UPDATE purges SET target_user_id = 0 WHERE target_user_id = ?",
                (user_id,),
            )
        self._user_settings_cache.pop(user_id, None)
        # Files go only after the commit: a failed commit must not leave rows without files.
        await self._delete_files(paths)
        return deleted
