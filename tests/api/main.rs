mod contacts_client;
