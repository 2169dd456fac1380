DROP TABLE used_assertions;
DROP TABLE server_keys;
DROP TABLE clients;
