"""Reading the user's files and shaping their records: formats, conversations, cleaning, splitting."""
