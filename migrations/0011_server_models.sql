-- Issue 19, several models: a server's own default model and the models its members may pick
-- (/mod settings). Names as MODELS gives them; NULL means "the bot's default" and "all of
-- them". allowed_models is a comma-separated list; a name the bot no longer has is ignored.

ALTER TABLE guild_settings ADD COLUMN default_model TEXT;
ALTER TABLE guild_settings ADD COLUMN allowed_models TEXT;
