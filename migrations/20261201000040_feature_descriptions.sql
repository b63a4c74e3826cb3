-- Operator-written descriptions of features, shown in the console (Flipper UI keeps them in Ruby
-- configuration; here they are data, changed in the console and audited as `describe`).
create table feature_descriptions (
    feature_key  varchar(255) primary key,
    description  text         not null,
    updated_by   text         not null,
    updated_at   timestamptz  not null default now()
);

insert into feature_descriptions (feature_key, description, updated_by)
values ('event_bus_gateway_emails_enabled',
        'Sends the Event Bus Gateway''s emails through VA Notify; off means they are recorded as suppressed.',
        'migration');
