SELECT encode_cipher($text) AS rot13, encode_shift3($text) AS rot3, letters_cipher($text) AS letters
